"""The demo's report from synthetic metrics files, its progress lines and its torchrun command.

The end-to-end ``--quick`` run is in test_demo_e2e.py.
"""

import json
import math

import pytest
import torch

from megatron_patch.logging_utils import console_line, validation_line
from tools import demo
from tools.demo_report import domain_names, summarise, weight_share_vs_data_share, write_report

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


RUNS = {"uniform": _records("uniform", 3.0), "linupper": _records("linupper", 2.5)}


def test_domain_ids_name_the_blend_order():
    assert domain_names(MANIFEST) == ["redundant", "clean"]


def test_weight_share_is_averaged_over_reweighting_iterations_only():
    shares = weight_share_vs_data_share(RUNS["linupper"])
    # iterations 3 and 4 only: clean (0.6 + 0.5) / 2, redundant (0.4 + 0.5) / 2
    assert shares["clean"] == pytest.approx({"weight_share": 0.55, "token_share": 0.6})
    assert shares["redundant"] == pytest.approx({"weight_share": 0.45, "token_share": 0.4})
    assert weight_share_vs_data_share(RUNS["uniform"]) == {}


def test_summary_numbers():
    summary = summarise(RUNS)
    assert summary["final_train_loss"] == pytest.approx({"uniform": 3.0, "linupper": 2.5})
    assert summary["final_valid_loss"] == pytest.approx({"uniform": 2.5, "linupper": 2.45})
    assert summary["valid_loss_difference"] == pytest.approx(-0.05)
    assert summary["final_valid_ppl"]["linupper"] == pytest.approx({"clean": math.exp(2.8), "redundant": math.exp(2.1)})
    # a perplexity ratio is exp of the loss difference
    assert summary["valid_ppl_change"] == pytest.approx({"clean": math.exp(-0.2) - 1, "redundant": math.exp(0.1) - 1})
    assert summary["tokens"] == 400
    assert summary["mean_ess"] == pytest.approx((0.95 + 1.0) / 2)
    assert summary["mean_max_weight"] == pytest.approx((1.5 + 1.6) / 2)


def test_report_files(tmp_path):
    context = {"recipe": dict(demo.QUICK, warmup=2, eval=2), "seed": 7, "wall_s": {"uniform": 10.0, "linupper": 11.0},
               "machine": "test box", "date": "2026-01-01", "command": "python -m tools.demo --quick"}
    summary = write_report(RUNS, MANIFEST, str(tmp_path), context)
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


def test_report_says_when_uniform_wins(tmp_path):
    runs = {"uniform": RUNS["linupper"], "linupper": RUNS["uniform"]}
    write_report(runs, MANIFEST, str(tmp_path))
    text = (tmp_path / "summary.md").read_text()
    assert "0.0500 nats above uniform's (uniform is ahead" in text


def test_group_weights_are_the_library_weights():
    """The scatter plot recomputes weights from the group record; check that path against the formula."""
    from reweighting import sample_weights

    losses = torch.tensor([1.0, 2.0, 3.0, 5.0])
    h = 2 * (losses - 1.0) / 4.0 - 1  # delta = 1
    s = torch.clamp(h + 1, max=1.0)  # LinUpper
    assert torch.allclose(sample_weights(losses, "linupper", 1.0, 1.0), torch.softmax(s / 1.0, 0))


def test_progress_lines_parse_the_loop_output(capsys):
    record = {"iteration": 10, "consumed_samples": 160, "ms_per_iter": 1400.0, "tokens_per_s": 2900, "lr": 1e-3,
              "global_batch_size": 16, "lm loss": 6.5, "weighted loss": 6.4, "reweight r": None, "grad_norm": 1.0,
              "skipped": 0, "nan_iterations": 0}
    progress = demo.Progress(iters_per_run=100, runs=2)
    progress.start_run(0)
    progress.run_start -= 50.0  # with the shift below: 30 s before the first line, at iteration 10
    progress.line("uniform", console_line(record, 100))  # no pace yet: no ETA
    progress.first = (10, progress.first[1] - 20.0)  # 10 more iterations in 20 s: 2 s each
    progress.line("uniform", console_line(dict(record, iteration=20), 100))
    progress.line("uniform", validation_line({"iteration": 20, "loss": 5.0, "ppl": math.exp(5.0),
                                              "domains": {"a": {"loss": 5.0, "ppl": math.exp(5.0)}}}))
    progress.line("uniform", "some other line\n")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0] == "[demo] uniform: iteration 10/100, lm loss 6.5000"
    # 80 iterations left here, then the second run: 10 s of start-up (30 s to iteration 10 at
    # 2 s each) and 100 iterations: 160 + 10 + 200 = 370 s
    assert lines[1] == "[demo] uniform: iteration 20/100, lm loss 6.5000, 2.00 s/iteration, ETA 6m10s"
    assert lines[2] == "[demo] uniform: validation at iteration 20: mean loss 5.0000, perplexity 148.41"


def test_torchrun_command_is_the_recipe():
    recipe = dict(demo.FULL, warmup=50, eval=62)
    manifest = {"train_data_path": "0.5 /d/a 0.5 /d/b", "valid_data_path": "0.5 /d/a_v 0.5 /d/b_v",
                "tokenizer_model": "/d/tok.model"}
    cmd = demo.torchrun_command("linupper", manifest, recipe, "/r/metrics.jsonl", seed=3)
    flags = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert flags["--nproc_per_node"] == "2"  # DP = 2: the real all-gather
    assert cmd[cmd.index("--data-path") + 1:cmd.index("--valid-data-path")] == ["0.5", "/d/a", "0.5", "/d/b"]
    assert flags["--global-batch-size"] == str(2 * recipe["micro"])  # one micro-batch per rank and step
    assert (flags["--reweight-strategy"], flags["--reweight-r"], flags["--reweight-warmup-iters"]) == ("linupper", "1.0", "50")
    assert (flags["--train-iters"], flags["--eval-interval"], flags["--seed"]) == ("250", "62", "3")
    assert flags["--metrics-file"] == "/r/metrics.jsonl"
