"""Health statistics of one group's weights, as device tensors (no host sync).

A collapse of the weights onto a few samples shows as a small effective sample size and a large
``N * max(w)``; ``low_loss_mass`` shows how much the lower-loss half of the group still counts
(0.5 for uniform weights on an even group).
"""

import math

import torch


def weight_stats(
    weights: torch.Tensor,
    losses: torch.Tensor,
    group_ids: torch.Tensor | None = None,
    num_groups: int = 0,
) -> dict[str, torch.Tensor]:
    """Statistics of ``weights`` [N] for the per-sample ``losses`` [N].

    N below counts the samples with a finite loss (the others have weight 0 and are reported as
    ``num_nonfinite``).

    Args:
        weights: [N] weights from :func:`reweighting.sample_weights`.
        losses: [N] the losses they were computed from.
        group_ids: optional [N] integer ids in [0, num_groups) (e.g. the data domain).
        num_groups: number of ids; needed with ``group_ids``.

    Returns:
        float32 scalars ``ess`` (1/sum(w^2) / N, 1 = uniform), ``max_weight`` (N*max w),
        ``min_weight`` (N*min w over finite samples), ``entropy`` (nats, log N = uniform),
        ``low_loss_mass`` (weight on the floor(N/2) lowest losses), ``num_nonfinite``;
        with ``group_ids`` also ``group_mass`` [num_groups], the weight per id.
    """
    w = weights.detach().float()
    x = losses.detach().float()
    finite = torch.isfinite(x)
    n = finite.sum().float()
    n_safe = n.clamp(min=1)
    ess = 1.0 / (w * w).sum().clamp(min=torch.finfo(torch.float32).tiny) / n_safe
    max_w = n * w.amax()
    min_w = n * torch.where(finite, w, math.inf).amin()
    min_w = torch.where(n > 0, min_w, torch.zeros_like(min_w))
    entropy = -torch.where(w > 0, w * torch.log(w.clamp(min=torch.finfo(torch.float32).tiny)), 0.0).sum()
    # Rank of each sample by loss (non-finite last); the lower half is rank < floor(N/2).
    order = torch.argsort(torch.where(finite, x, math.inf), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    low_half = (rank.float() < torch.floor(n / 2)) & finite
    stats = {
        "ess": ess,
        "max_weight": max_w,
        "min_weight": min_w,
        "entropy": entropy,
        "low_loss_mass": torch.where(low_half, w, 0.0).sum(),
        "num_nonfinite": (~finite).sum().float(),
    }
    if group_ids is not None:
        if num_groups <= 0:
            raise ValueError("num_groups must be > 0 when group_ids are given")
        mass = torch.zeros(num_groups, dtype=torch.float32, device=w.device)
        stats["group_mass"] = mass.index_add(0, group_ids.long(), w)
    return stats
