"""tools/compare_runs.py on synthetic runs: two labels, several seeds, run directories with downstream scores.
Every number is checked against numpy's own mean, standard deviation and standard error."""

import json
import math
import os

import numpy as np
import pytest

from tests.helpers.cli import one_error_line
from tests.tools.helpers import TOOLS, run_python
from tools.compare_runs import compare, main

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)

DOMAINS = ("code", "wiki")
# label -> per seed: final validation loss per domain, weight share of code, downstream acc
SEEDS = {"uniform": [({"code": 3.0, "wiki": 4.0}, None, 0.25), ({"code": 3.2, "wiki": 4.1}, None, 0.30)],
         "linupper": [({"code": 3.1, "wiki": 3.8}, 0.40, 0.35), ({"code": 3.3, "wiki": 3.7}, 0.44, 0.31),
                      ({"code": 3.0, "wiki": 3.9}, 0.42, 0.36)]}


def _records(valid, code_weight, resumed=False):
    """Four logged steps (iterations 3 and 4 reweight when ``code_weight``), validation at 2 and 4."""
    out = []
    for it in range(1, 5):
        reweighting = code_weight is not None and it > 2
        domains = {d: {"loss": 3.0, "token_share": 0.5,
                       **({"weight_share": code_weight if d == "code" else 1 - code_weight} if reweighting else {})}
                   for d in DOMAINS}
        out.append({"kind": "train", "iteration": it, "tokens": 100 * it, "lm loss": 5.0 - it + sum(valid.values()) / 10,
                    "reweight r": 1.0 if reweighting else None, "domains": domains})
        if it % 2 == 0:
            losses = {d: v + (0.5 if it == 2 else 0.0) for d, v in valid.items()}
            out.append({"kind": "valid", "iteration": it, "tokens": 100 * it, "loss": sum(losses.values()) / 2,
                        "domains": {d: {"loss": v, "ppl": math.exp(v)} for d, v in losses.items()}})
    if resumed:  # a run killed after iteration 4's log and resumed from iteration 2: 3 and 4 logged again
        out[3:3] = [dict(r, **{"lm loss": 99.0}) for r in out if r["kind"] == "train" and r["iteration"] > 2]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``LABEL=PATH`` specs: uniform seeds as metrics files, linupper seeds as run directories with downstream.json."""
    root, specs = tmp_path_factory.mktemp("runs"), []
    for label, seeds in SEEDS.items():
        for i, (valid, code_weight, acc) in enumerate(seeds):
            records = _records(valid, code_weight, resumed=i == 0)
            if label == "uniform":
                path = root / f"{label}_{i}.jsonl"
                metrics = path
            else:
                path = root / f"{label}_{i}"
                path.mkdir()
                metrics = path / "metrics.jsonl"
                (path / "downstream.json").write_text(json.dumps({"scores": {"sciq": {"acc": acc}}}))
            metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
            specs.append(f"{label}={path}")
    return specs


@pytest.fixture(scope="module")
def summary(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return compare(runs, str(out)), out


def _stats(values):
    return np.mean(values), np.std(values, ddof=1), len(values)


def test_means_spreads_and_differences(summary):
    result, _ = summary
    labels = result["labels"]
    assert result["baseline"] == "uniform" and [len(n["seeds"]) for n in labels.values()] == [2, 3]
    final = {label: [sum(v.values()) / 2 for v, _, _ in seeds] for label, seeds in SEEDS.items()}
    for label in SEEDS:
        mean, std, n = _stats(final[label])
        assert labels[label]["final_valid_loss"] == pytest.approx({"mean": mean, "std": std, "n": n})
        assert labels[label]["final_train_loss"]["mean"] == pytest.approx(1.0 + np.mean(final[label]) / 5)
    (mu, su, nu), (ml, sl, nl) = _stats(final["uniform"]), _stats(final["linupper"])
    diff = result["differences"]["linupper"]["final_valid_loss"]
    assert diff == pytest.approx({"diff": ml - mu, "se": math.sqrt(su ** 2 / nu + sl ** 2 / nl)})
    wiki = [math.exp(v["wiki"]) for v, _, _ in SEEDS["linupper"]]
    assert labels["linupper"]["valid_ppl"]["wiki"]["mean"] == pytest.approx(np.mean(wiki))
    assert labels["linupper"]["valid_ppl"]["wiki"]["std"] == pytest.approx(np.std(wiki, ddof=1))
    code_weights = [w for _, w, _ in SEEDS["linupper"]]
    assert labels["linupper"]["weight_share"]["code"]["mean"] == pytest.approx(np.mean(code_weights))
    assert labels["linupper"]["token_share"]["code"]["mean"] == pytest.approx(0.5)
    assert labels["uniform"]["weight_share"] == {} and labels["uniform"]["downstream"] == {}
    accs = [a for _, _, a in SEEDS["linupper"]]
    assert labels["linupper"]["downstream"]["sciq/acc"] == pytest.approx({"mean": np.mean(accs),
                                                                         "std": np.std(accs, ddof=1), "n": 3})


def test_resumed_runs_count_each_iteration_once(summary):
    result, _ = summary
    # seed 0 of each label re-logged iterations 3-4 with lm loss 99 before the real ones: the last record wins
    assert result["labels"]["uniform"]["final_train_loss"]["mean"] < 10


def test_report_and_plots(summary):
    result, out = summary
    text = (out / "report.md").read_text()
    loss = result["labels"]["linupper"]["final_valid_loss"]
    diff = result["differences"]["linupper"]["final_valid_loss"]
    assert f"| linupper | 3 | 400 | " in text and f"{loss['mean']:.4f} ± {loss['std']:.4f}" in text
    assert f"{diff['diff']:+.4f} ± {diff['se']:.4f}" in text
    assert "Weight share against token share: linupper" in text and "| sciq/acc |" in text
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(result))
    assert sorted(result["plots"]) == ["domain_perplexity.png", "downstream.png", "loss.png", "weight_shares.png"]
    for name in result["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5000


def test_one_seed_has_no_spread(runs, tmp_path):
    result = compare([runs[0], runs[2]], str(tmp_path), baseline="linupper")
    assert result["labels"]["uniform"]["final_valid_loss"]["std"] is None
    assert result["differences"]["uniform"]["final_valid_loss"]["se"] is None
    assert "| uniform | 1 |" in (tmp_path / "report.md").read_text()


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    for argv, text in [(["--out", str(tmp_path), "uniform"], "expected LABEL=PATH"),
                       (["--out", str(tmp_path), f"x={tmp_path / 'none.jsonl'}"], "no readable metrics file"),
                       (["--out", str(tmp_path), runs[0], "--baseline", "other"], "--baseline other: no run has that label")]:
        assert text in one_error_line(main, argv, capsys)


def test_runs_as_a_file_from_elsewhere(runs, tmp_path):
    proc = run_python([os.path.join(TOOLS, "compare_runs.py"), "--out", str(tmp_path / "r"), *runs[:3]], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 runs in 2 labels" in proc.stdout and (tmp_path / "r" / "report.md").exists()
