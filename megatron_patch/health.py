"""Weight health: warn when the reweighting collapses onto a few samples.

Collapse shows as a small effective sample size (``ess`` = ESS / N, 1 for uniform weights) or a
large ``max_weight`` (N x the largest weight, 1 for uniform weights), both averaged over a log
interval. One bad interval is noise; :class:`WeightHealth` warns when ``patience`` intervals in
a row are bad, and again each further bad interval, and puts ``weight_collapse`` (0/1) into the
record so that tensorboard and the metrics file show it too. Nothing is changed in training.

For scale: with ``linupper`` and r = 0.4 on evenly spread losses, ESS/N is about 0.7 and
N x max weight about 2.7; the paper's bound on the max/min ratio is exp(1 / r) = 12.2.
"""

import dataclasses
from typing import ClassVar

from .config import check_ranges, flag


@dataclasses.dataclass(frozen=True)
class WeightHealthConfig:
    """When to warn that the weights collapse onto a few samples (the ``--weight-collapse-*`` flags)."""

    FLAG_PREFIX: ClassVar[str] = "weight-collapse-"

    min_ess: float = flag(0.1, "warn when ESS/N stays below this (0: off)", minimum=0, maximum=1)
    max_weight: float = flag(20.0, "warn when N x the largest weight stays above this (0: off)", minimum=0)
    patience: int = flag(3, "log intervals in a row before warning", minimum=1)

    def __post_init__(self):
        check_ranges(self)


class WeightHealth:
    """Counts consecutive bad log intervals; :meth:`check` annotates a train record."""

    def __init__(self, config: WeightHealthConfig):
        self.config = config
        self.bad_intervals = 0

    def problems(self, record: dict) -> list[str]:
        """What is wrong with this interval's weights (empty when healthy or not reweighting)."""
        out = []
        ess, max_weight = record.get("ess"), record.get("max_weight")
        if self.config.min_ess and ess is not None and ess < self.config.min_ess:
            out.append(f"ESS/N {ess:.3f} < {self.config.min_ess} (--weight-collapse-min-ess)")
        if self.config.max_weight and max_weight is not None and max_weight > self.config.max_weight:
            out.append(f"N x max weight {max_weight:.2f} > {self.config.max_weight} (--weight-collapse-max-weight)")
        return out

    def check(self, record: dict) -> str | None:
        """Set ``record["weight_collapse"]`` when reweighting; return a warning line when due."""
        if record.get("ess") is None:
            self.bad_intervals = 0
            return None
        problems = self.problems(record)
        self.bad_intervals = self.bad_intervals + 1 if problems else 0
        collapsed = self.bad_intervals >= self.config.patience
        record["weight_collapse"] = int(collapsed)
        if not collapsed:
            return None
        return (f"WARNING: weights collapsing at iteration {record['iteration']} for {self.bad_intervals} log "
                f"intervals: {'; '.join(problems)}. A larger --reweight-r spreads the weights")
