"""tools/bench/group.py: the driver's order, flags and figure from fake runs (no timing asserted)."""

import pytest

from tests.tools.helpers import fake_training_runs
from tools.bench import group, overhead

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_group_cost_ratio_from_metrics_files(monkeypatch, capsys):
    ms = {"global-batch": iter([130.0, 140.0, 136.0]), "micro-batch": iter([100.0, 100.0, 100.0])}
    fake, calls = fake_training_runs(ms, "--reweight-group")
    monkeypatch.setattr(overhead, "run_torchrun", fake)
    ratio = group.main(["--rounds", "3", "--train-iters", "3", "--skip-iters", "1"])
    assert ratio == pytest.approx(1.36)  # rounds 1.30, 1.40, 1.36
    assert [f["--reweight-group"] for _, f, _ in calls] == ["global-batch", "micro-batch", "micro-batch",
                                                            "global-batch", "global-batch", "micro-batch"]
    # 4 micro-batches per rank, reweighting on in both modes
    assert all(f["--global-batch-size"] == "16" and f["--reweight-strategy"] == "linupper" for _, f, _ in calls)
    out = capsys.readouterr().out
    assert "expected near 1.333" in out and "of 3 rounds): 1.36 [1.3, 1.4]; target <= 1.4: met" in out
