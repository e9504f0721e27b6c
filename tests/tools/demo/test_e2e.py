"""End to end: ``make demo ARGS=--quick`` (the e2e test of the demo; about 1.5 minutes on 2 cores).

Real fixture text, the corpus tools, two 2-process ``pretrain_llama.py`` runs and the report. The
demo runs as a file from another directory (``python /abs/tools/demo/run.py``), which also checks
that it finds the repository wherever it is started.
"""

import json
import math
import os

import pytest

from tests.tools.helpers import TOOLS, run_python

pytestmark = pytest.mark.one_stack  # the demo's own stack is .venv (make demo): the second stack skips it (pytest.ini)


def test_e2e_quick_demo(tmp_path):
    out = tmp_path / "report"
    proc = run_python([os.path.join(TOOLS, "demo", "run.py"), "--quick", "--out", str(out),
                       "--data", str(tmp_path / "data")], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ETA" in proc.stdout and f"report: {out / 'summary.md'}" in proc.stdout
    summary = json.load(open(out / "summary.json"))
    values = [*summary["final_valid_loss"].values(), *summary["final_train_loss"].values(), summary["mean_ess"],
              summary["mean_max_weight"], *[p for run in summary["final_valid_ppl"].values() for p in run.values()],
              *[x for share in summary["weight_vs_data_share"].values() for x in share.values()]]
    assert all(math.isfinite(v) for v in values)
    assert set(summary["weight_vs_data_share"]) >= {"redundant", "books"}
    assert 0 < summary["mean_ess"] <= 1
    assert sorted(summary["plots"]) == ["domain_perplexity.png", "loss.png", "weights_over_time.png",
                                        "weights_vs_loss.png"]
    for name in summary["plots"]:
        assert (out / name).stat().st_size > 5000
    assert "What the numbers say" in (out / "summary.md").read_text()
