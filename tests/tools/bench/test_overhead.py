"""tools/bench/overhead.py: the driver's order, flags and figure from fake runs (no timing asserted)."""

import pytest

from tests.tools.helpers import fake_training_runs
from tools.bench import overhead

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_bench_overhead_ratio_from_metrics_files(monkeypatch, capsys):
    """The driver: per-round medians from each run's metrics file, median of the round ratios."""
    ms = {"linupper": iter([101.0, 104.0, 99.0]), "uniform": iter([100.0, 100.0, 100.0])}
    fake, calls = fake_training_runs(ms, "--reweight-strategy")
    monkeypatch.setattr(overhead, "run_torchrun", fake)
    ratio = overhead.main(["--rounds", "3", "--train-iters", "3", "--skip-iters", "1"])
    assert ratio == pytest.approx(1.01)
    assert [f["--reweight-strategy"] for _, f, _ in calls] == ["linupper", "uniform", "uniform", "linupper",
                                                               "linupper", "uniform"]
    assert all(script == "pretrain_llama.py" and f["--train-iters"] == "3" and n == 2 for script, f, n in calls)
    # round ratios 1.01, 1.04, 0.99: median 1.01, range [0.99, 1.04]
    out = capsys.readouterr().out
    assert "ms/step linupper: 101 [99, 104], uniform: 100 [100, 100]" in out
    assert "of 3 rounds): 1.01 [0.99, 1.04]; target <= 1.01: met" in out
