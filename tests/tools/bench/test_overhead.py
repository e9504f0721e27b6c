"""tools/bench/overhead.py: the driver's order, flags and figure from fake runs (no timing asserted)."""

import json

import pytest

from tools.bench import overhead


def test_bench_overhead_ratio_from_metrics_files(monkeypatch, capsys):
    """The driver: per-round medians from each run's metrics file, median of the round ratios."""
    ms = {"linupper": iter([101.0, 104.0, 99.0]), "uniform": iter([100.0, 100.0, 100.0])}
    calls = []

    def fake_run_torchrun(target, nproc):
        flags = target[1:]
        strategy = flags[flags.index("--reweight-strategy") + 1]
        calls.append((target[0], strategy, flags[flags.index("--train-iters") + 1], nproc))
        value = next(ms[strategy])
        rows = [{"kind": "train", "iteration": i, "ms_per_iter": 5 * value if i == 1 else value} for i in (1, 2, 3)]
        with open(flags[flags.index("--metrics-file") + 1], "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in [*rows, {"kind": "valid", "iteration": 3, "loss": 1.0}])

    monkeypatch.setattr(overhead, "run_torchrun", fake_run_torchrun)
    ratio = overhead.main(["--rounds", "3", "--train-iters", "3", "--skip-iters", "1"])
    assert ratio == pytest.approx(1.01)
    assert [c[1] for c in calls] == ["linupper", "uniform", "uniform", "linupper", "linupper", "uniform"]
    assert all(c[0] == "pretrain_llama.py" and c[2:] == ("3", 2) for c in calls)
    # round ratios 1.01, 1.04, 0.99: median 1.01, range [0.99, 1.04]
    out = capsys.readouterr().out
    assert "ms/step linupper: 101 [99, 104], uniform: 100 [100, 100]" in out
    assert "of 3 rounds): 1.01 [0.99, 1.04]; target <= 1.01: met" in out
