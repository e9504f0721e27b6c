"""The temperature schedule: which r is in effect at a given training iteration.

The paper starts near-uniform while losses say little about the samples, then reweights:
the GPT-2 code trains plainly for its warm-up, the 1.4B/7B code uses r = 100 (near-uniform, the
gather and softmax still run). Both are warm-up modes here, with an optional linear ramp of r
from the warm-up value to the target afterwards.

The schedule is a pure function of the iteration: its whole state is its configuration, which
``state_dict``/``from_state_dict`` round-trip through a checkpoint.
"""

import dataclasses
import math

from .weights import check_temperature

WARMUP_MODES = ("uniform", "large-r")


@dataclasses.dataclass(frozen=True)
class TemperatureSchedule:
    """r as a function of the iteration (the number of optimizer steps already taken)."""

    target_r: float = 1.0
    """The temperature after warm-up and ramp."""
    warmup_iters: int = 0
    """Iterations [0, warmup_iters) are the warm-up."""
    warmup_mode: str = "uniform"
    """``uniform``: no reweighting during warm-up (r reported as inf); ``large-r``: reweight with ``warmup_r``."""
    warmup_r: float = 100.0
    """The temperature of a ``large-r`` warm-up, and the start of the ramp."""
    ramp_iters: int = 0
    """After warm-up, r moves linearly from ``warmup_r`` to ``target_r`` over this many iterations."""

    def __post_init__(self):
        check_temperature(self.target_r)
        check_temperature(self.warmup_r)
        if self.warmup_mode not in WARMUP_MODES:
            raise ValueError(
                f"unknown warm-up mode {self.warmup_mode!r}; choose one of {', '.join(WARMUP_MODES)}"
            )
        for name in ("warmup_iters", "ramp_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")

    def r_at(self, iteration: int) -> float:
        """The temperature in effect at ``iteration``; ``math.inf`` means plain uniform training."""
        if iteration < self.warmup_iters:
            return math.inf if self.warmup_mode == "uniform" else self.warmup_r
        into_ramp = iteration - self.warmup_iters
        if into_ramp < self.ramp_iters:
            frac = into_ramp / self.ramp_iters
            return self.warmup_r + frac * (self.target_r - self.warmup_r)
        return self.target_r

    def reweighting_at(self, iteration: int) -> bool:
        """Whether the weights are computed at ``iteration`` (False during a uniform warm-up)."""
        return math.isfinite(self.r_at(iteration))

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "TemperatureSchedule":
        return cls(**state)
