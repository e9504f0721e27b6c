"""Weight health: warn when the reweighting collapses onto a few samples.

Collapse shows as a small effective sample size (``ess`` = ESS / N, 1 for uniform weights) or a
large ``max_weight`` (N x the largest weight, 1 for uniform weights), both averaged over a log
interval. One bad interval is noise; :class:`WeightHealth` warns when ``patience`` intervals in
a row are bad, and again each further bad interval, and puts ``weight_collapse`` (0/1) into the
record so that tensorboard and the metrics file show it too. Nothing is changed in training.

For scale: with ``linupper`` and r = 0.4 on evenly spread losses, ESS/N is about 0.7 and
N x max weight about 2.7; the paper's bound on the max/min ratio is exp(1 / r) = 12.2.
"""

import argparse
import dataclasses


@dataclasses.dataclass(frozen=True)
class WeightHealthConfig:
    min_ess: float = 0.1
    """Warn when ESS / N stays below this (0 turns the check off)."""
    max_weight: float = 20.0
    """Warn when N x the largest weight stays above this (0 turns the check off)."""
    patience: int = 3
    """How many log intervals in a row must be bad before the warning."""

    def __post_init__(self):
        if not 0 <= self.min_ess <= 1:
            raise ValueError(f"--weight-collapse-min-ess {self.min_ess}: must be in [0, 1] (ESS / N)")
        if self.max_weight < 0:
            raise ValueError(f"--weight-collapse-max-weight {self.max_weight}: must be >= 0 (N x max weight)")
        if self.patience < 1:
            raise ValueError(f"--weight-collapse-patience {self.patience}: must be >= 1 log interval")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "WeightHealthConfig":
        """From the flags of :func:`add_weight_health_args`; a parser without them gets the defaults."""
        defaults = cls()
        return cls(**{f.name: getattr(args, f"weight_collapse_{f.name}", getattr(defaults, f.name))
                      for f in dataclasses.fields(cls)})


def add_weight_health_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``--weight-collapse-*`` flags (thresholds of :class:`WeightHealthConfig`)."""
    g = parser.add_argument_group("weight health", "warn when the reweighting collapses onto few samples")
    g.add_argument("--weight-collapse-min-ess", type=float, default=WeightHealthConfig.min_ess,
                   help="warn when ESS/N stays below this (default %(default)s; 0: off)")
    g.add_argument("--weight-collapse-max-weight", type=float, default=WeightHealthConfig.max_weight,
                   help="warn when N x max weight stays above this (default %(default)s; 0: off)")
    g.add_argument("--weight-collapse-patience", type=int, default=WeightHealthConfig.patience,
                   help="log intervals in a row before warning (default %(default)s)")
    return parser


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
