"""tools/bench/group.py: the driver's order, flags and figure from fake runs (no timing asserted)."""

import json

import pytest

from tools.bench import group, overhead


def test_group_cost_ratio_from_metrics_files(monkeypatch, capsys):
    ms = {"global-batch": iter([130.0, 140.0, 136.0]), "micro-batch": iter([100.0, 100.0, 100.0])}
    calls = []

    def fake_run_torchrun(target, nproc):
        flags = target[1:]
        mode = flags[flags.index("--reweight-group") + 1]
        calls.append((mode, flags[flags.index("--global-batch-size") + 1], flags[flags.index("--reweight-strategy") + 1]))
        value = next(ms[mode])
        rows = [{"kind": "train", "iteration": i, "ms_per_iter": 3 * value if i == 1 else value} for i in (1, 2, 3)]
        with open(flags[flags.index("--metrics-file") + 1], "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in rows)

    monkeypatch.setattr(overhead, "run_torchrun", fake_run_torchrun)
    ratio = group.main(["--rounds", "3", "--train-iters", "3", "--skip-iters", "1"])
    assert ratio == pytest.approx(1.36)  # rounds 1.30, 1.40, 1.36
    assert [c[0] for c in calls] == ["global-batch", "micro-batch", "micro-batch", "global-batch",
                                     "global-batch", "micro-batch"]
    assert all(c[1:] == ("16", "linupper") for c in calls)  # 4 micro-batches per rank, reweighting on
    out = capsys.readouterr().out
    assert "expected near 1.333" in out and "of 3 rounds): 1.36 [1.3, 1.4]; target <= 1.4: met" in out
