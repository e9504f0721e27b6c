"""Loss-based sample weights (Sow et al., ICLR 2025), in pure PyTorch.

For one reweighting group of N per-sample losses ``l``:

1. normalise by the group's min and max:  ``h = 2*delta*(l - l_min)/(l_max - l_min) - delta``
2. score each sample with a strategy ``s = f(h)`` (table below)
3. weights ``w = softmax(s / r)``: a temperature ``r`` near 0 reweights hard, a large ``r`` is
   near-uniform, and ``max(w)/min(w) <= exp((max s - min s)/r)`` bounds the largest weight.

=========== ======================== ==============================================
strategy    score s = f(h)           effect
=========== ======================== ==============================================
uniform     (none)                   exactly 1/N: plain training, the baseline
linupper    min(h + delta, delta)    low losses down-weighted, upper half capped
quadratic   1 - h^2/delta^2          extremes (lowest and highest) down-weighted
extremes    |h|                      extremes (lowest and highest) up-weighted
=========== ======================== ==============================================

Everything stays on the device: no ``.item()``, no Python branch on a tensor value, so the
function compiles with ``torch.compile(fullgraph=True)`` and never stalls a GPU step.
"""

import math

import torch

STRATEGIES = ("uniform", "linupper", "quadratic", "extremes")

# Names used by the authors' code bases. "upper" means two different functions there (a plain
# ramp in the GPT-2 code, LinUpper in the FSDP code), so it is refused rather than guessed.
_LEGACY_NAMES = {
    "upper": "'upper' is ambiguous in the reference code bases; use 'linupper' (min(h+d, d))",
    "mid": "'mid' is the reference code's name for 'quadratic'; use 'quadratic'",
}


def check_strategy(strategy: str) -> None:
    """Raise ``ValueError`` unless ``strategy`` is one of :data:`STRATEGIES`."""
    if strategy in _LEGACY_NAMES:
        raise ValueError(f"unknown reweighting strategy {strategy!r}: {_LEGACY_NAMES[strategy]}")
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown reweighting strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
        )


def check_temperature(r: float) -> None:
    """Raise ``ValueError`` unless ``r`` is a finite number > 0."""
    if isinstance(r, torch.Tensor) or not isinstance(r, (int, float)):
        raise ValueError(f"temperature r must be a Python number > 0, got {r!r}")
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"temperature r must be finite and > 0, got {r!r} (e.g. 1.0; large r = near-uniform)")


def check_delta(delta: float) -> None:
    """Raise ``ValueError`` unless ``delta`` is a finite number > 0."""
    if isinstance(delta, torch.Tensor) or not isinstance(delta, (int, float)):
        raise ValueError(f"delta must be a Python number > 0, got {delta!r}")
    if not math.isfinite(delta) or delta <= 0:
        raise ValueError(f"delta must be finite and > 0, got {delta!r} (the paper uses 1.0)")


def normalise_losses(losses: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Min-max normalise the finite entries of ``losses`` [N] to [-delta, delta].

    Non-finite entries and groups whose finite losses are all equal map to 0 (the midpoint).
    Returns float32 [N].
    """
    x = losses.detach().float()
    finite = torch.isfinite(x)
    lo = torch.where(finite, x, math.inf).amin()
    hi = torch.where(finite, x, -math.inf).amax()
    span = hi - lo
    spread = span > 0  # False when all finite losses are equal or none is finite
    safe_span = torch.where(spread, span, torch.ones_like(span))
    h = 2.0 * delta * (torch.where(finite, x, lo) - lo) / safe_span - delta
    return torch.where(finite & spread, h, torch.zeros_like(h))


def strategy_score(h: torch.Tensor, strategy: str, delta: float = 1.0) -> torch.Tensor:
    """Score ``s = f(h)`` of the normalised losses ``h`` [N] for a non-uniform strategy."""
    if strategy == "linupper":
        return torch.clamp(h + delta, max=delta)
    if strategy == "quadratic":
        return 1.0 - h * h / (delta * delta)
    if strategy == "extremes":
        return h.abs()
    check_strategy(strategy)
    raise ValueError(f"strategy {strategy!r} has no score: 'uniform' does not reweight")


def sample_weights(losses: torch.Tensor, strategy: str, r: float, delta: float = 1.0) -> torch.Tensor:
    """Weights of one reweighting group.

    Args:
        losses: [N] per-sample losses, any float dtype, any device (not differentiated).
        strategy: one of ``uniform``, ``linupper``, ``quadratic``, ``extremes``.
        r: softmax temperature, finite and > 0 (ignored by ``uniform``, but still checked).
        delta: half-width of the normalised loss range, > 0 (the paper uses 1).

    Returns:
        float32 [N] on the device of ``losses``: non-negative, summing to 1 over the finite
        losses; a non-finite loss gets exactly 0 and does not move the min/max. If all finite
        losses are equal the weights are uniform; ``uniform`` gives exactly 1/N_finite.
    """
    check_strategy(strategy)
    check_temperature(r)
    check_delta(delta)
    if losses.dim() != 1:
        raise ValueError(f"losses must be 1-D [N], got shape {tuple(losses.shape)}")
    x = losses.detach().float()
    finite = torch.isfinite(x)
    if strategy == "uniform":
        count = finite.sum().clamp(min=1).float()
        return finite.float() / count
    s = strategy_score(normalise_losses(x, delta), strategy, delta)
    s_max = torch.where(finite, s, -math.inf).amax()
    s_max = torch.where(torch.isfinite(s_max), s_max, torch.zeros_like(s_max))
    e = torch.where(finite, torch.exp((s - s_max) / r), torch.zeros_like(s))
    return e / e.sum().clamp(min=torch.finfo(torch.float32).tiny)
