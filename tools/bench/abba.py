"""The ABBA runner of the benchmarks, and the report of a ratio measured with it.

The benchmarks run on shared, noisy machines, so every comparison is a ratio of two variants
measured in the same invocation: the variants alternate in ABBA order (A B, B A, A B, ...), so a
slow drift of the machine's load hits both alike, and the reported figure is the median of the
per-round ratios.
"""

import statistics
from typing import Callable, Dict, List, Sequence


def abba_order(variants: Sequence[str], rounds: int) -> List[str]:
    """The calls of ``rounds`` rounds: the variants in order, then reversed, and so on.

    For two variants: A B B A A B ... (``2 * rounds`` entries).
    """
    forward, backward = list(variants), list(reversed(variants))
    return [v for i in range(rounds) for v in (forward if i % 2 == 0 else backward)]


def interleave(variants: Sequence[str], rounds: int, run: Callable[[str], float]) -> Dict[str, List[float]]:
    """Call ``run(variant)`` in :func:`abba_order`.

    Returns:
        ``{variant: [one result per round]}``.
    """
    results = {v: [] for v in variants}
    for variant in abba_order(variants, rounds):
        results[variant].append(run(variant))
    return results


def round_ratios(results: Dict[str, List[float]], numerator: str, denominator: str) -> List[float]:
    """The ratio ``numerator / denominator`` of each round."""
    return [a / b for a, b in zip(results[numerator], results[denominator])]


def spread(values: Sequence[float]) -> str:
    """``median [min, max]`` with 4 significant digits."""
    return f"{statistics.median(values):.4g} [{min(values):.4g}, {max(values):.4g}]"


def report_ratio(results: Dict[str, List[float]], numerator: str, denominator: str, *, what: str, unit: str,
                 target: float, at_most: bool) -> float:
    """Print both variants' spreads and the median round ratio against its target; returns that median."""
    ratios = round_ratios(results, numerator, denominator)
    ratio = statistics.median(ratios)
    met = ratio <= target if at_most else ratio >= target
    print(f"{unit} {numerator}: {spread(results[numerator])}, {denominator}: {spread(results[denominator])}")
    print(f"{what} ({numerator} / {denominator} {unit}, median [min, max] of {len(ratios)} rounds): "
          f"{spread(ratios)}; target {'<=' if at_most else '>='} {target}: {'met' if met else 'NOT met'}")
    return ratio
