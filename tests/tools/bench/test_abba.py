"""tools.bench.abba: the ABBA order, the per-round ratios and the printed report, against hand values."""

import pytest

from tools.bench.abba import abba_order, interleave, report_ratio, round_ratios, spread

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_interleave_runs_rounds_in_abba_order():
    calls = []
    results = interleave(["a", "b"], 3, lambda v: calls.append(v) or len(calls))
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert results == {"a": [1, 4, 5], "b": [2, 3, 6]}
    assert round_ratios(results, "a", "b") == [1 / 2, 4 / 3, 5 / 6]


@pytest.mark.parametrize("variants, rounds, order", [
    (("u", "l"), 3, ["u", "l", "l", "u", "u", "l"]),
    (("A", "B"), 4, list("ABBAABBA")),
    (("a", "b", "c"), 3, list("abccbaabc")),
    (("A", "B"), 0, []),
])
def test_abba_order(variants, rounds, order):
    assert abba_order(variants, rounds) == order


def test_spread_is_median_min_max():
    assert spread([3.0, 1.0, 2.0, 10.0]) == "2.5 [1, 10]"
    assert spread([1.23456]) == "1.235 [1.235, 1.235]"


def test_report_prints_the_median_round_ratio_and_the_verdict(capsys):
    # ratios per round 1.10, 0.90, 1.05: median 1.05 (not the ratio of the medians, 105 / 100 = 1.05
    # by chance here, so the second case below tells them apart)
    results = {"x": [110.0, 90.0, 105.0], "y": [100.0, 100.0, 100.0]}
    assert report_ratio(results, "x", "y", what="overhead", unit="ms", target=1.01, at_most=True) == pytest.approx(1.05)
    assert capsys.readouterr().out.splitlines() == [
        "ms x: 105 [90, 110], y: 100 [100, 100]",
        "overhead (x / y ms, median [min, max] of 3 rounds): 1.05 [0.9, 1.1]; target <= 1.01: NOT met",
    ]
    # median of the ratios 2/1, 1/4, 9/3 is 2, while the ratio of the medians would be 2/3
    results = {"a": [2.0, 1.0, 9.0], "b": [1.0, 4.0, 3.0]}
    assert report_ratio(results, "a", "b", what="speed", unit="tokens/s", target=1.5, at_most=False) == 2.0
    assert capsys.readouterr().out.splitlines()[1] == (
        "speed (a / b tokens/s, median [min, max] of 3 rounds): 2 [0.25, 3]; target >= 1.5: met")
