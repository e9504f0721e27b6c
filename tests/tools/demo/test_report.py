"""tools/demo/report.py: the demo's report from synthetic metrics files.

The runner's tests are in test_run.py, the end-to-end ``--quick`` run in test_e2e.py.
"""

import json
import math

import pytest
import torch

from tools.demo.run import QUICK
from tools.demo.report import domain_names, load_runs, summarise, weight_share_vs_data_share, write_report

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)

DOMAINS = ("clean", "redundant")
MANIFEST = {
    "tokens": {"train": 1000, "valid": 100},
    # the blend lists redundant first: domain ids follow the blend, not the dict order
    "train_data_path": "0.4 /d/redundant_train_text_document 0.6 /d/clean_train_text_document",
    "domains": {"clean": {"splits": {"train": {"prefix": "/d/clean_train_text_document"}}},
                "redundant": {"splits": {"train": {"prefix": "/d/redundant_train_text_document"}}}},
}
# iteration -> domain -> (token share, weight share); iterations 1-2 are the uniform warm-up
SHARES = {i: {"clean": (0.6, 0.9 - 0.1 * i), "redundant": (0.4, 0.1 + 0.1 * i)} for i in range(1, 5)}
VALID = {"uniform": {"clean": 3.0, "redundant": 2.0}, "linupper": {"clean": 2.8, "redundant": 2.1}}


def _records(strategy, final_train_loss):
    """A run's metrics file: 4 logged steps, a group record per reweighting step, 2 validations."""
    out = []
    for it in range(1, 5):
        reweighting = strategy == "linupper" and it > 2
        record = {"kind": "train", "iteration": it, "tokens": 100 * it, "lm loss": final_train_loss + 4 - it,
                  "reweight r": 1.0 if reweighting else None,
                  "domains": {d: {"loss": 2.0, "token_share": t, **({"weight_share": w} if reweighting else {})}
                              for d, (t, w) in SHARES[it].items()}}
        if reweighting:
            record.update(ess=0.8 + 0.05 * it, max_weight=1.2 + 0.1 * it)
            out.append(record)
            out.append({"kind": "group", "iteration": it, "strategy": "linupper", "r": 1.0, "delta": 1.0,
                        "losses": [1.0, 2.0, 3.0, 4.0 + it], "domain_ids": [0, 1, 0, 1]})
        else:
            out.append(record)
        if it % 2 == 0:
            losses = {d: v - 0.5 * (it == 2) for d, v in VALID[strategy].items()}
            mean = sum(losses.values()) / len(losses)
            out.append({"kind": "valid", "iteration": it, "tokens": 100 * it, "loss": mean, "ppl": math.exp(mean),
                        "domains": {d: {"loss": v, "ppl": math.exp(v)} for d, v in losses.items()}})
    return out


RECORDS = {"uniform": _records("uniform", 3.0), "linupper": _records("linupper", 2.5)}


def _write_metrics(directory, records_by_run):
    """One metrics file per run, as ``--metrics-file`` writes them; ``{run: path}``."""
    paths = {}
    for name, records in records_by_run.items():
        paths[name] = str(directory / f"{name}.jsonl")
        with open(paths[name], "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)
    return paths


@pytest.fixture(scope="module")
def metrics_files(tmp_path_factory):
    return _write_metrics(tmp_path_factory.mktemp("metrics"), RECORDS)


@pytest.fixture(scope="module")
def runs(metrics_files):
    return load_runs(metrics_files)


def test_runs_are_read_by_kind(runs):
    assert runs["linupper"]["train"] == [r for r in RECORDS["linupper"] if r["kind"] == "train"]
    assert runs["linupper"]["valid"] == [r for r in RECORDS["linupper"] if r["kind"] == "valid"]
    assert [g["iteration"] for g in runs["linupper"]["group"]] == [3, 4] and runs["uniform"]["group"] == []


def test_domain_ids_name_the_blend_order():
    assert domain_names(MANIFEST) == ["redundant", "clean"]


def test_weight_share_is_averaged_over_reweighting_iterations_only(runs):
    shares = weight_share_vs_data_share(runs["linupper"]["train"])
    # iterations 3 and 4 only: clean (0.6 + 0.5) / 2, redundant (0.4 + 0.5) / 2
    assert shares["clean"] == pytest.approx({"weight_share": 0.55, "token_share": 0.6})
    assert shares["redundant"] == pytest.approx({"weight_share": 0.45, "token_share": 0.4})
    assert weight_share_vs_data_share(runs["uniform"]["train"]) == {}


def test_summary_numbers(runs):
    summary = summarise(runs)
    assert summary["final_train_loss"] == pytest.approx({"uniform": 3.0, "linupper": 2.5})
    assert summary["final_valid_loss"] == pytest.approx({"uniform": 2.5, "linupper": 2.45})
    assert summary["valid_loss_difference"] == pytest.approx(-0.05)
    assert summary["final_valid_ppl"]["linupper"] == pytest.approx({"clean": math.exp(2.8), "redundant": math.exp(2.1)})
    # a perplexity ratio is exp of the loss difference
    assert summary["valid_ppl_change"] == pytest.approx({"clean": math.exp(-0.2) - 1, "redundant": math.exp(0.1) - 1})
    assert summary["tokens"] == 400
    assert summary["mean_ess"] == pytest.approx((0.95 + 1.0) / 2)
    assert summary["mean_max_weight"] == pytest.approx((1.5 + 1.6) / 2)


def test_report_files(tmp_path, metrics_files):
    context = {"recipe": dict(QUICK, warmup=2, eval=2), "seed": 7, "wall_s": {"uniform": 10.0, "linupper": 11.0},
               "machine": "test box", "date": "2026-01-01", "command": "python -m tools.demo.run --quick"}
    summary = write_report(metrics_files, MANIFEST, str(tmp_path), context)
    assert json.load(open(tmp_path / "summary.json")) == json.loads(json.dumps(summary))
    assert summary["context"]["seed"] == 7
    text = (tmp_path / "summary.md").read_text()
    assert "| redundant | 0.400 | 0.450 | 1.125 |" in text
    assert "| clean | 0.600 | 0.550 | 0.917 |" in text
    assert f"| clean | {math.exp(3.0):.2f} | {math.exp(2.8):.2f} | -18.1% |" in text
    assert "0.0500 nats below uniform's (LinUpper is ahead" in text
    assert "lower on clean; higher or equal on redundant" in text
    assert "The redundant domain was not down-weighted: 0.450 of the weight for 0.400 of the tokens" in text
    assert "Wall time per run: uniform 10 s, linupper 11 s." in text
    assert sorted(summary["plots"]) == ["domain_perplexity.png", "loss.png", "weights_over_time.png",
                                        "weights_vs_loss.png"]
    for name in summary["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / name).stat().st_size > 5000


def test_report_says_when_uniform_wins(tmp_path, metrics_files):
    swapped = {"uniform": metrics_files["linupper"], "linupper": metrics_files["uniform"]}
    write_report(swapped, MANIFEST, str(tmp_path))
    text = (tmp_path / "summary.md").read_text()
    assert "0.0500 nats above uniform's (uniform is ahead" in text


def test_group_weights_are_the_library_weights():
    """The scatter plot recomputes weights from the group record; check that path against the formula."""
    from reweighting import sample_weights

    losses = torch.tensor([1.0, 2.0, 3.0, 5.0])
    h = 2 * (losses - 1.0) / 4.0 - 1  # delta = 1
    s = torch.clamp(h + 1, max=1.0)  # LinUpper
    assert torch.allclose(sample_weights(losses, "linupper", 1.0, 1.0), torch.softmax(s / 1.0, 0))


def test_several_seeds_add_means_spreads_and_differences(tmp_path, metrics_files):
    """With two seeds a run: the single-run tables are the first seed's, then tools/compare_runs.py's means."""
    import statistics

    second = _write_metrics(tmp_path, {"uniform": _records("uniform", 3.2), "linupper": _records("linupper", 2.9)})
    files = {name: [metrics_files[name], second[name]] for name in ("uniform", "linupper")}
    context = {"recipe": dict(QUICK, warmup=2, eval=2), "seed": 7, "seeds": [7, 8], "machine": "test box",
               "wall_s": {"uniform seed 7": 10.0}, "date": "2026-01-01", "command": "python -m tools.demo.run --seeds 2"}
    summary = write_report(files, MANIFEST, str(tmp_path / "report"), context)
    assert summary["final_train_loss"] == pytest.approx({"uniform": 3.0, "linupper": 2.5})  # the first seed's
    labels = summary["comparison"]["labels"]
    spread = statistics.stdev([2.5, 2.9])
    assert labels["linupper"]["final_train_loss"] == pytest.approx({"mean": 2.7, "std": spread, "n": 2})
    assert labels["uniform"]["final_valid_loss"] == pytest.approx({"mean": 2.5, "std": 0.0, "n": 2})
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "The tables below are seed 7's; the means over seeds 7, 8 follow them." in text
    assert f"| linupper | 2 | 400 | 2.7000 ± {spread:.4f} | 2.4500 ± 0.0000 | -0.0500 ± 0.0000 |" in text
    assert sorted(summary["plots"]) == ["domain_perplexity.png", "loss.png", "weights_over_time.png",
                                        "weights_vs_loss.png"]
