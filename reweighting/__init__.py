"""Dynamic loss-based sample reweighting (Sow et al., ICLR 2025): the math, in pure PyTorch.

Imports only torch; usable from any trainer. ``megatron_patch`` wires it into megatron-core.
"""

from .schedule import WARMUP_MODES, TemperatureSchedule
from .stats import weight_stats
from .weights import (
    STRATEGIES,
    check_delta,
    check_strategy,
    check_temperature,
    normalise_losses,
    sample_weights,
    strategy_score,
)

__all__ = [
    "STRATEGIES",
    "WARMUP_MODES",
    "TemperatureSchedule",
    "check_delta",
    "check_strategy",
    "check_temperature",
    "normalise_losses",
    "sample_weights",
    "strategy_score",
    "weight_stats",
]
