"""tools/experiments/redundancy.py: the blend, bad input, the report's rules, and ``--quick`` end to end.

The end-to-end test (2 two-process runs on the fixture text; the file took 55 s on the 2-core VM at
load 3 to 5) checks that every number of the report is finite and is the one its runs' metrics
files give.
"""

import json
import math
import os
import statistics

import pytest

from megatron_patch.logging_utils import read_metrics
from tests.tools.helpers import TOOLS, run_python
from tools.experiments import redundancy
from tools.experiments.redundancy_report import write_report

pytestmark = pytest.mark.one_stack  # an experiment run on .venv (docs/redundancy.md): the second stack skips it (pytest.ini)


def test_blend_puts_the_share_on_the_redundant_stream():
    manifest = {"train_data_path": "0.2 /d/a 0.2 /d/b 0.6 /d/redundant", "domains": {
        "a": {}, "b": {}, "redundant": {"splits": {"train": {"prefix": "/d/redundant"}}}}}
    ordinary = redundancy.ordinary_blend(manifest)  # the demo's own redundant domain is left out
    assert ordinary == [(0.5, "/d/a"), (0.5, "/d/b")]
    tokens = redundancy.blend_for_share(ordinary, "/s/redundant_train_text_document", 0.25).split()
    assert tokens == ["0.375000", "/d/a", "0.375000", "/d/b", "0.250000", "/s/redundant_train_text_document"]
    assert redundancy.blend_for_share(ordinary, "/s/r", 0.0).split() == ["0.500000", "/d/a", "0.500000", "/d/b"]


def test_the_grid_interleaves_strategies_within_a_seed():
    runs = redundancy.grid_runs(dict(redundancy.FULL))
    assert len(runs) == 27
    assert [(r["label"], r["seed"]) for r in runs[:4]] == [("uniform", 1234), ("linupper r=0.5", 1234),
                                                           ("linupper r=1", 1234), ("uniform", 1235)]
    assert len({redundancy.metrics_path("/o", r) for r in runs}) == 27


@pytest.mark.parametrize("argv, message", [
    (["--shares", "120"], "error: --shares 120: a share is a percentage"),
    (["--shares", "-5"], "error: --shares -5: a share is a percentage"),
    (["--shares", "25", "25"], "error: --shares 25 25: a value is repeated"),
    (["--shares", "half"], "error: argument --shares: invalid float value: 'half'"),
    (["--r", "0"], "error: --r 0: the temperature must be above 0"),
    (["--iters", "3"], "error: --iters 3: at least 5"),
    (["--out", __file__], f"error: --out {__file__}: exists and is not a directory"),
])
def test_bad_input_is_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        redundancy.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def _fake_run(path, valid_loss, share, weight_share=None):
    """A metrics file: 3 train records (redundant token share ``share``), 2 validations (the last ``valid_loss``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    records = []
    for i in (1, 2, 3):
        domains = {"a": {"loss": 5.0, "token_share": 1 - share}}
        if share:
            domains["redundant"] = {"loss": 3.0, "token_share": share}
            if weight_share is not None:
                domains["redundant"]["weight_share"] = weight_share
        records.append({"kind": "train", "iteration": i, "tokens": 100 * i, "lm loss": 5.0, "domains": domains,
                        "reweight r": None if weight_share is None or i == 1 else 1.0})
    records += [{"kind": "valid", "iteration": i, "tokens": 100 * i, "loss": loss, "ppl": math.exp(loss),
                 "domains": {"a": {"loss": loss, "ppl": math.exp(loss)}}} for i, loss in ((2, 6.0), (3, valid_loss))]
    with open(path, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return path


def test_report_numbers_and_verdict_follow_the_rules(tmp_path):
    # uniform 5.0 +- 0.01 at every share; "linupper r=1" gains 0, 0.05, 0.10 (grows, beyond 2 SE);
    # "linupper r=0.5" loses 0.00, 0.05, 0.10 (shrinks beyond 2 SE: against the mechanism).
    offsets = {"uniform": 0.0, "linupper r=1": -1.0, "linupper r=0.5": 1.0}
    runs = []
    for share, step in ((0, 0.0), (25, 0.05), (50, 0.10)):
        for seed, noise in ((1, -0.01), (2, 0.01)):
            for label, sign in offsets.items():
                run = {"share": share, "label": label, "seed": seed, "wall_s": 1.0}
                run["metrics"] = _fake_run(redundancy.metrics_path(str(tmp_path), run), 5.0 + sign * step + noise,
                                           share / 100, None if label == "uniform" else 0.2)
                runs.append(run)
    context = {"date": "2026-12-02", "command": "c", "machine": "m", "wall_s": 60.0,
               "grid": dict(redundancy.FULL, warmup=20, eval=25), "redundant_stream": {"documents": ["x"], "tokens": 10}}
    summary = write_report(runs, str(tmp_path / "out"), context)
    se = math.sqrt(2 * statistics.stdev([-0.01, 0.01]) ** 2 / 2)
    good, bad = summary["facts"]["linupper r=1"], summary["facts"]["linupper r=0.5"]
    assert good["advantage"] == pytest.approx([0.0, 0.05, 0.10]) and good["se"] == pytest.approx([se] * 3)
    assert good["grows"] and good["exceeds_spread"] == [False, True, True]
    assert good["outcome"] == "supports the paper's mechanism"
    assert bad["advantage"] == pytest.approx([0.0, -0.05, -0.10]) and not bad["grows"]
    assert bad["outcome"] == "against the paper's mechanism"
    assert summary["shares"]["50"]["paired"]["linupper r=1"]["mean"] == pytest.approx(-0.10)
    shares = summary["shares"]["50"]["redundant"]["linupper r=1"]
    assert shares["redundant_token_share"]["mean"] == pytest.approx(0.5)
    assert shares["redundant_weight_share"]["mean"] == pytest.approx(0.2)  # the iterations that reweighted
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| 50% | linupper r=1 | 5.0000 ± 0.0141 | 4.9000 ± 0.0141 | -0.1000 ± 0.0141 | -0.1000 ± 0.0000 |" in text
    assert "| 50% | linupper r=1 | 0.500 ± 0.000 | 0.200 ± 0.000 | 0.400 |" in text
    assert sorted(summary["plots"]) == ["advantage.png", "loss_share_0.png", "loss_share_25.png",
                                        "loss_share_50.png", "redundant_weight_share.png"]


def test_e2e_quick(tmp_path):
    out = tmp_path / "report"
    proc = run_python([os.path.join(TOOLS, "experiments", "redundancy.py"), "--quick", "--out", str(out),
                       "--data", str(tmp_path / "data")], cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"report: {out / 'summary.md'}" in proc.stdout
    summary = json.load(open(out / "summary.json"))
    rows = summary["runs"]
    assert [(r["share"], r["label"]) for r in rows] == [(50, "uniform"), (50, "linupper r=1")]
    for row in rows:  # each run's numbers are its metrics file's
        train, valid = read_metrics(row["metrics"], "train"), read_metrics(row["metrics"], "valid")
        assert row["final_valid_loss"] == valid[-1]["loss"] and math.isfinite(row["final_valid_loss"])
        assert set(valid[-1]["domains"]) == {"books", "speeches", "code", "math"}  # ordinary domains only
        shares = [r["domains"].get("redundant", {}).get("token_share", 0.0) for r in train]
        assert row["redundant_token_share"] == pytest.approx(statistics.fmean(shares))
        assert abs(row["redundant_token_share"] - row["share"] / 100) < 0.15
        weights = [r["domains"]["redundant"]["weight_share"] for r in train if r.get("reweight r") is not None
                   and "weight_share" in r["domains"].get("redundant", {})]
        if row["label"] == "uniform":
            assert row["redundant_weight_share"] is None
        else:
            assert row["redundant_weight_share"] == pytest.approx(statistics.fmean(weights))
            assert 0 < row["redundant_weight_share"] < 1
    u, l = (row["final_valid_loss"] for row in rows)  # the difference is that of the runs' final losses
    diff = summary["shares"]["50"]["comparison"]["differences"]["linupper r=1"]["final_valid_loss"]["diff"]
    assert diff == pytest.approx(l - u)
    facts = summary["facts"]["linupper r=1"]
    assert facts["shares"] == ["50"] and facts["advantage"] == [pytest.approx(u - l)]
    assert facts["outcome"].startswith("untested")  # one share and one seed decide nothing
    for name in summary["plots"]:
        assert (out / name).stat().st_size > 5000
    assert "## Verdict" in (out / "summary.md").read_text()
