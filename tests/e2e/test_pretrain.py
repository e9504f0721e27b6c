"""2-process CPU runs of the entry points on a real (fixture) dataset: train, log, save, resume."""

import json
import math
import os
import shutil

from conftest import TINY, data_flags, read_metrics, torchrun


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_llama_linupper_run_then_exact_resume(fixture_data, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    flags = [*TINY, *data_flags(fixture_data), "--global-batch-size", "8", "--train-iters", "6",
             "--save-interval", "3", "--eval-interval", "3", "--lr-warmup-iters", "1",
             "--reweight-strategy", "linupper", "--reweight-r", "0.5", "--reweight-warmup-iters", "2"]
    out = torchrun("pretrain_llama.py", [*flags, "--save", str(full), "--metrics-file", str(full / "m.jsonl")])
    assert "iteration        6/       6" in out.stdout

    records = read_metrics(full / "m.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(_finite(r["lm loss"]) and _finite(r["grad_norm"]) for r in train)
    # Uniform warm-up for 2 iterations (no r, no weights), then r = 0.5 with weight statistics.
    assert [r["reweight r"] for r in train] == [None, None, 0.5, 0.5, 0.5, 0.5]
    assert "ess" not in train[0] and all(0 < r["ess"] <= 1 for r in train[2:])
    domains = train[-1]["domains"]
    assert set(domains) == {"books", "speeches", "code", "math", "redundant"}
    assert abs(sum(d["weight_share"] for d in domains.values()) - 1) < 1e-5
    groups = [r for r in records if r["kind"] == "group"]
    assert groups and len(groups[-1]["losses"]) == 4  # micro batch 2 x DP 2
    valid = [r for r in records if r["kind"] == "valid"]
    assert [v["iteration"] for v in valid] == [3, 6]
    assert set(valid[-1]["domains"]) == {"books", "speeches", "code", "math"}
    assert (full / "latest_checkpointed_iteration.txt").read_text() == "6"
    run = json.loads((full / "run.json").read_text())
    assert run["layout"]["dp"] == 2 and run["versions"]["megatron-core"] == "0.16.1"

    # Resume from iteration 3: the losses of iterations 4-6 equal the uninterrupted run's, bit for bit.
    resumed.mkdir()
    shutil.copytree(full / "iter_0000003", resumed / "iter_0000003")
    (resumed / "latest_checkpointed_iteration.txt").write_text("3")
    out = torchrun("pretrain_llama.py", [*flags, "--save", str(resumed), "--load", str(resumed),
                                         "--metrics-file", str(resumed / "m.jsonl")])
    assert "resumed from" in out.stdout and "at iteration 3" in out.stdout
    again = [r for r in read_metrics(resumed / "m.jsonl") if r["kind"] == "train"]
    assert [r["iteration"] for r in again] == [4, 5, 6]
    for a, b in zip(again, train[3:]):
        assert (a["lm loss"], a["weighted loss"], a["grad_norm"], a["lr"]) == (
            b["lm loss"], b["weighted loss"], b["grad_norm"], b["lr"])

    # A different data-parallel size would change the reweighting group: refused.
    out = torchrun("pretrain_llama.py", [*flags, "--load", str(full), "--save", str(tmp_path / "dp1"),
                                         "--global-batch-size", "4"], nproc=1, check=False)
    assert out.returncode != 0 and "data-parallel size 2, this run has 1" in out.stderr + out.stdout


def test_gpt_entry_point_tensor_parallel(fixture_data, tmp_path):
    out = torchrun("pretrain_gpt.py", [*TINY[2:], "--model", "gpt2-mini", *data_flags(fixture_data),
                                       "--tensor-model-parallel-size", "2", "--train-iters", "3",
                                       "--reweight-strategy", "linupper", "--metrics-file", str(tmp_path / "m.jsonl")])
    train = [r for r in read_metrics(tmp_path / "m.jsonl") if r["kind"] == "train"]
    assert len(train) == 3 and all(_finite(r["lm loss"]) for r in train)
    assert train[-1]["lm loss"] < train[0]["lm loss"] + 0.5


def test_llama_pipeline_parallel_with_distributed_optimizer(fixture_data, tmp_path):
    torchrun("pretrain_llama.py", [*TINY, *data_flags(fixture_data), "--pipeline-model-parallel-size", "2",
                                   "--global-batch-size", "4", "--train-iters", "3", "--use-distributed-optimizer",
                                   "--reweight-strategy", "quadratic", "--save", str(tmp_path / "ck"),
                                   "--metrics-file", str(tmp_path / "m.jsonl")])
    train = [r for r in read_metrics(tmp_path / "m.jsonl") if r["kind"] == "train"]
    assert len(train) == 3 and all(_finite(r["lm loss"]) and _finite(r["ess"]) for r in train)
    assert os.path.isdir(tmp_path / "ck" / "iter_0000003")
