"""The demo's report from synthetic metrics, and the --quick demo end to end."""

import json
import math
import os
import subprocess
import sys

import pytest

from tools.demo_report import summarise, weight_share_vs_data_share, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _records(final_loss, shares):
    """A run's metrics: 4 logged steps (the first two a uniform warm-up), a group and a validation."""
    out = []
    for it in range(1, 5):
        reweighting = it > 2
        record = {"kind": "train", "iteration": it, "tokens": 100 * it, "lm loss": final_loss + 4 - it,
                  "reweight r": 1.0 if reweighting else None,
                  "domains": {d: {"loss": 2.0, "token_share": t, **({"weight_share": w} if reweighting else {})}
                              for d, (t, w) in shares[it].items()}}
        if reweighting:
            record.update(ess=0.8 + 0.05 * it, max_weight=1.5)
        out.append(record)
    out.append({"kind": "group", "iteration": 4, "strategy": "linupper", "r": 1.0, "delta": 1.0,
                "losses": [1.0, 2.0, 3.0, 4.0], "domain_ids": [0, 1, 0, 1]})
    out.append({"kind": "valid", "iteration": 4, "tokens": 400, "loss": final_loss, "ppl": math.exp(final_loss),
                "domains": {"a": {"loss": final_loss, "ppl": math.exp(final_loss)}}})
    return out


SHARES = {i: {"clean": (0.5, 0.7 - 0.1 * i), "redundant": (0.5, 0.3 + 0.1 * i)} for i in range(1, 5)}


def test_weight_share_is_averaged_over_reweighting_iterations_only():
    shares = weight_share_vs_data_share(_records(3.0, SHARES))
    # iterations 3 and 4 only: clean (0.4 + 0.3)/2, redundant (0.6 + 0.7)/2
    assert shares["clean"] == pytest.approx({"weight_share": 0.35, "token_share": 0.5})
    assert shares["redundant"] == pytest.approx({"weight_share": 0.65, "token_share": 0.5})


def test_summary_and_files(tmp_path):
    runs = {"uniform": _records(3.0, SHARES), "linupper": _records(2.5, SHARES)}
    summary = write_report(runs, {"tokens": {"train": 1000}}, str(tmp_path))
    assert summary["final_valid_loss"] == {"uniform": 3.0, "linupper": 2.5}
    assert summary["final_train_loss"]["linupper"] == pytest.approx(2.5)
    assert summary["mean_ess"] == pytest.approx((0.95 + 1.0) / 2)
    assert summary == {**json.load(open(tmp_path / "summary.json")), "plots": summary["plots"]}
    text = (tmp_path / "summary.md").read_text()
    assert "| redundant | 0.500 | 0.650 | 1.300 |" in text
    for name in ("loss.png", "weights_over_time.png", "weights_vs_loss.png", "domain_perplexity.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_quick_demo_end_to_end(tmp_path):
    """`make demo ARGS=--quick`: real data, two 2-process runs, a report with finite numbers."""
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "tools.demo", "--quick", "--out", str(out),
                           "--data", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ETA" in proc.stdout and "report:" in proc.stdout
    summary = json.load(open(out / "summary.json"))
    values = [*summary["final_valid_loss"].values(), *summary["final_train_loss"].values(), summary["mean_ess"]]
    assert all(math.isfinite(v) for v in values)
    assert set(summary["weight_vs_data_share"]) >= {"redundant", "books"}
    for name in summary["plots"]:
        assert (out / name).stat().st_size > 1000
