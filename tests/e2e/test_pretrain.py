"""2-process CPU runs of the entry points on a real (fixture) dataset: train, log, save, resume."""

import importlib.metadata
import json
import math
import os
import re
import shutil

from megatron_patch.logging_utils import read_metrics
from tests.helpers.e2e import TINY, data_flags, torchrun


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def console_fields(stdout: str) -> list[dict]:
    """The ``key: value`` fields of each Megatron-style iteration line, values as floats when numeric."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith(" iteration "):
            fields = {}
            for part in line.strip(" |").split(" | ")[1:]:
                key, _, value = part.partition(": ")
                try:
                    fields[key] = float(value)
                except ValueError:
                    fields[key] = value
            rows.append(fields)
    return rows


def checkpoint_copy(src, iteration: int, dst):
    """``dst`` holding only ``src``'s checkpoint of ``iteration``, marked latest: a run to resume."""
    dst.mkdir()
    name = f"iter_{iteration:07d}"
    shutil.copytree(src / name, dst / name)
    (dst / "latest_checkpointed_iteration.txt").write_text(str(iteration))


NUMERIC = ("consumed samples", "elapsed time per iteration (ms)", "tokens/s", "learning rate", "lm loss",
           "weighted loss", "grad norm", "number of skipped iterations", "number of nan iterations")


def test_llama_linupper_run_then_exact_resume(fixture_data, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    flags = [*TINY, *data_flags(fixture_data), "--global-batch-size", "8", "--train-iters", "6",
             "--save-interval", "3", "--eval-interval", "3", "--lr-warmup-iters", "1",
             "--reweight-strategy", "linupper", "--reweight-r", "0.5", "--reweight-warmup-iters", "2"]
    out = torchrun("pretrain_llama.py", [*flags, "--save", str(full), "--metrics-file", str(full / "m.jsonl")])
    assert "iteration        6/       6" in out.stdout
    lines = console_fields(out.stdout)
    assert len(lines) == 6 and all(_finite(row[key]) for row in lines for key in NUMERIC)
    assert [row["r"] for row in lines] == ["uniform", "uniform", 0.5, 0.5, 0.5, 0.5]
    assert all(0 < row["ess"] <= 1 and row["max weight"] >= 1 for row in lines[2:])
    assert all(re.search(r"books: loss \d+\.\d+ tok \d\.\d+ w \d\.\d+", line)
               for line in out.stdout.splitlines()[-8:] if line.startswith(" iteration        6"))

    records = read_metrics(full / "m.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(_finite(r["lm loss"]) and _finite(r["grad_norm"]) for r in train)
    # Uniform warm-up for 2 iterations (no r, no weights), then r = 0.5 with weight statistics.
    assert [r["reweight r"] for r in train] == [None, None, 0.5, 0.5, 0.5, 0.5]
    assert "ess" not in train[0]
    # linupper scores lie in [0, delta] and the group (micro batch 2 x DP 2) has 4 samples, so a weight
    # is at most exp(delta/r) times another: N max(w) <= 4 e^2 / (e^2 + 3), and ESS/N >= 1 / (N max(w)).
    bound = 4 * math.exp(2) / (math.exp(2) + 3)
    for r in train[2:]:
        assert 1 <= r["max_weight"] <= bound * (1 + 1e-6), r
        assert 1 / r["max_weight"] <= r["ess"] * (1 + 1e-6) <= 1 + 1e-6, r
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
    assert run["layout"]["dp"] == 2 and run["versions"]["megatron-core"] == importlib.metadata.version("megatron-core")

    # Resume from iteration 3: the losses of iterations 4-6 equal the uninterrupted run's, bit for bit.
    checkpoint_copy(full, 3, resumed)
    out = torchrun("pretrain_llama.py", [*flags, "--save", str(resumed), "--load", str(resumed),
                                         "--metrics-file", str(resumed / "m.jsonl")])
    assert re.search(r"resumed from .* at iteration 3 \(24 samples consumed: books \d+, speeches \d+, code \d+, "
                     r"math \d+, redundant \d+\)", out.stdout)
    again = [r for r in read_metrics(resumed / "m.jsonl") if r["kind"] == "train"]
    assert [r["iteration"] for r in again] == [4, 5, 6]
    for a, b in zip(again, train[3:]):
        assert (a["lm loss"], a["weighted loss"], a["grad_norm"], a["lr"]) == (
            b["lm loss"], b["weighted loss"], b["grad_norm"], b["lr"])

    # A different data-parallel size would change the reweighting group: refused.
    out = torchrun("pretrain_llama.py", [*flags, "--load", str(full), "--save", str(tmp_path / "dp1"),
                                         "--global-batch-size", "4"], nproc=1, check=False)
    assert out.returncode != 0 and "data-parallel size 2, this run has 1" in out.stderr + out.stdout

    # A changed blend would repeat or skip data: refused, unless --override-data-blend.
    changed = list(flags)
    changed[changed.index("--data-path") + 1] = "0.9"  # the first domain's weight
    changed += ["--load", str(full), "--save", str(tmp_path / "reblended")]
    out = torchrun("pretrain_llama.py", changed, check=False)
    assert out.returncode != 0 and "--override-data-blend" in out.stdout + out.stderr
    out = torchrun("pretrain_llama.py", [*changed, "--override-data-blend", "--train-iters", "7"])
    assert "resumed from" in out.stdout and "iteration        7/       7" in out.stdout


def test_gpt_tensor_parallel_uniform_with_dropout_resumes_exactly(fixture_data, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    flags = [*TINY[2:], "--model", "gpt2-mini", *data_flags(fixture_data, valid=False), "--split", "80,20,0",
             "--tensor-model-parallel-size", "2", "--train-iters", "4", "--save-interval", "2",
             "--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--reweight-strategy", "uniform"]
    out = torchrun("pretrain_gpt.py", [*flags, "--save", str(full), "--metrics-file", str(full / "m.jsonl")])
    records = read_metrics(full / "m.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 4 and all(_finite(r["lm loss"]) for r in train)
    # uniform is plain Megatron: no weights, the weighted loss is the lm loss.
    assert all(r["reweight r"] is None and "ess" not in r and r["weighted loss"] == r["lm loss"] for r in train)
    lines = console_fields(out.stdout)
    assert len(lines) == 4 and all(row["r"] == "uniform" and _finite(row["lm loss"]) for row in lines)
    # Without --valid-data-path the validation sets are each prefix's --split part, one per domain;
    # books is a single document, all of it in the training part.
    valid = [r for r in records if r["kind"] == "valid"]
    assert set(valid[-1]["domains"]) == {"speeches", "code", "math", "redundant"}
    assert "leaves no validation document in" in out.stdout and "no validation set for books" in out.stdout

    # Dropout under TP draws from the RNG tracker and the default generator: both are restored.
    checkpoint_copy(full, 2, resumed)
    torchrun("pretrain_gpt.py", [*flags, "--save", str(resumed), "--load", str(resumed),
                                 "--metrics-file", str(resumed / "m.jsonl")])
    again = read_metrics(resumed / "m.jsonl")
    assert [(r["lm loss"], r["grad_norm"]) for r in again if r["kind"] == "train"] == [
        (r["lm loss"], r["grad_norm"]) for r in train[2:]]
    assert [r for r in again if r["kind"] == "valid"][-1]["domains"] == valid[-1]["domains"]


def test_llama_pipeline_parallel_with_distributed_optimizer(fixture_data, tmp_path):
    torchrun("pretrain_llama.py", [*TINY, *data_flags(fixture_data), "--pipeline-model-parallel-size", "2",
                                   "--global-batch-size", "4", "--train-iters", "3", "--use-distributed-optimizer",
                                   "--reweight-strategy", "quadratic", "--save", str(tmp_path / "ck"),
                                   "--metrics-file", str(tmp_path / "m.jsonl")])
    records = read_metrics(tmp_path / "m.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 3 and all(_finite(r["lm loss"]) for r in train)
    # The group is micro batch 2 x DP 1: quadratic scores its two samples 1 - h^2 with h = -1 and
    # +1 (or 0 and 0 for equal losses), the same score, so the weights are exactly uniform.
    for r in train:
        assert (r["ess"], r["max_weight"], r["min_weight"], r["low_loss_mass"]) == (1.0, 1.0, 1.0, 0.5), r
        assert math.isclose(r["entropy"], math.log(2), rel_tol=1e-6)
        assert math.isclose(r["weighted loss"], r["lm loss"], rel_tol=1e-6), r
    groups = [r for r in records if r["kind"] == "group"]
    assert [len(g["losses"]) for g in groups] == [2, 2, 2] and all(g["strategy"] == "quadratic" for g in groups)
    assert os.path.isdir(tmp_path / "ck" / "iter_0000003")


def test_overlapped_communication_matches_and_resumes_exactly(fixture_data, tmp_path):
    """--overlap-grad-reduce/--overlap-param-gather (small buckets, 2 micro-batches) train the same
    model; evaluation and checkpoints see the gathered parameters, not this rank's stale copy."""
    flags = [*TINY, *data_flags(fixture_data), "--global-batch-size", "8", "--train-iters", "4",
             "--use-distributed-optimizer", "--reweight-strategy", "linupper", "--reweight-r", "1",
             "--eval-interval", "2", "--save-interval", "2"]
    overlap = ["--overlap-grad-reduce", "--overlap-param-gather", "--ddp-bucket-size", "50000"]
    plain, over, resumed = tmp_path / "plain", tmp_path / "over", tmp_path / "resumed"
    torchrun("pretrain_llama.py", [*flags, "--save", str(plain), "--metrics-file", str(plain / "m.jsonl")])
    out = torchrun("pretrain_llama.py", [*flags, *overlap, "--save", str(over), "--metrics-file", str(over / "m.jsonl")])
    assert "has no effect" not in out.stdout
    a, b = read_metrics(plain / "m.jsonl"), read_metrics(over / "m.jsonl")
    train_a, train_b = ([r for r in recs if r["kind"] == "train"] for recs in (a, b))
    valid_a, valid_b = ([r for r in recs if r["kind"] == "valid"] for recs in (a, b))
    assert [r["iteration"] for r in train_b] == [1, 2, 3, 4] and [r["iteration"] for r in valid_b] == [2, 4]
    # Other buckets shard the gradient norm's sum differently: equal up to rounding, not bit for bit.
    for ra, rb in zip(train_a + valid_a, train_b + valid_b):
        for key in ("lm loss", "grad_norm", "loss"):
            if key in ra:
                assert math.isclose(ra[key], rb[key], rel_tol=1e-5), (key, ra, rb)

    # A checkpoint saved under overlap resumes bit for bit (it holds every shard's update).
    checkpoint_copy(over, 2, resumed)
    torchrun("pretrain_llama.py", [*flags, *overlap, "--save", str(resumed), "--load", str(resumed),
                                   "--metrics-file", str(resumed / "m.jsonl")])
    again = [r for r in read_metrics(resumed / "m.jsonl") if r["kind"] == "train"]
    assert [(r["lm loss"], r["grad_norm"]) for r in again] == [(r["lm loss"], r["grad_norm"]) for r in train_b[2:]]


def test_sbatch_default_optimizer_setup_in_bf16_resumes_exactly(fixture_data, tmp_path):
    """bf16 + distributed optimizer + overlap (what the Llama sbatch scripts run): the fp32 main
    weights and Adam state of every shard come back, so the run continues bit for bit."""
    flags = [*TINY, *data_flags(fixture_data, valid=False), "--global-batch-size", "8", "--train-iters", "4",
             "--bf16", "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
             "--reweight-strategy", "linupper", "--reweight-r", "1", "--save-interval", "2"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    torchrun("pretrain_llama.py", [*flags, "--save", str(full), "--metrics-file", str(full / "m.jsonl")])
    train = [r for r in read_metrics(full / "m.jsonl") if r["kind"] == "train"]
    assert len(train) == 4 and all(_finite(r["lm loss"]) for r in train)
    checkpoint_copy(full, 2, resumed)
    torchrun("pretrain_llama.py", [*flags, "--save", str(resumed), "--load", str(resumed),
                                   "--metrics-file", str(resumed / "m.jsonl")])
    again = [r for r in read_metrics(resumed / "m.jsonl") if r["kind"] == "train"]
    assert [(r["lm loss"], r["grad_norm"]) for r in again] == [(r["lm loss"], r["grad_norm"]) for r in train[2:]]
