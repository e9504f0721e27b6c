"""``--trainer megatron-lm``: Megatron-LM's own loop with our flags, model, data and loss (2 gloo processes).

Each run records every training micro-batch's loss as a float hex per rank
(tests/helpers/megatron_lm_entry.py), so "the same" below means bit for bit. Runs on a
megatron-core that ships ``megatron.training`` (0.17 and later); on 0.16.1 only the refusal runs.
"""

import math
import os
import re
import subprocess
import sys

import pytest

from megatron_patch.launch import ROOT, launch_env, run_torchrun
from megatron_patch.megatron_lm import megatron_lm_available

HAVE_MLM = megatron_lm_available()
needs_mlm = pytest.mark.skipif(not HAVE_MLM, reason="megatron-core < 0.17 ships no megatron.training")

ENTRY = "tests/helpers/megatron_lm_entry.py"
ITERS = 10
FLAGS = ["--model", "tiny", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "256",
         "--seq-length", "32", "--max-position-embeddings", "32", "--train-iters", str(ITERS), "--lr", "1e-3",
         "--log-interval", "1", "--eval-iters", "0", "--hidden-dropout", "0.1", "--use-distributed-optimizer"]
LINUPPER = ["--reweight-strategy", "linupper", "--reweight-r", "1.0"]
# Megatron-LM's iteration line: "... | lm loss: 5.557084E+00 | ... | weighted loss: ... |"
FIELD = re.compile(r"\| ([a-z_ ]+): ([-+0-9.EINFa-z]+)(?= \|)")


def train(tmp_path, name, *flags, nproc=2, micro_batch=2, **env):
    """One run of the entry point; returns (per-rank recorded losses, Megatron-LM's iteration lines)."""
    record = str(tmp_path / name)
    args = [*FLAGS, "--micro-batch-size", str(micro_batch), "--global-batch-size", "4", *flags]
    result = run_torchrun([ENTRY, *args], nproc, timeout=900, env=launch_env(RW_LOSS_RECORD=record, **env))
    losses = [open(f"{record}.{rank}").read().split("\n")[:-1] for rank in range(nproc)]
    lines = [dict(FIELD.findall(line)) for line in result.stdout.splitlines() if re.search(r"iteration +\d+/", line)]
    return losses, lines


@pytest.fixture(scope="module")
def linupper(tmp_path_factory):
    """Megatron-LM's loop under linupper, DP=2 x micro batch 2, 10 iterations."""
    return train(tmp_path_factory.mktemp("mlm"), "linupper", "--trainer", "megatron-lm", *LINUPPER)


@needs_mlm
def test_uniform_is_megatron_lms_stock_loss_bit_for_bit(tmp_path):
    ours, _ = train(tmp_path, "uniform", "--trainer", "megatron-lm")
    stock, _ = train(tmp_path, "stock", "--trainer", "megatron-lm", RW_STOCK_LOSS="1")
    assert len(ours[0]) == ITERS and ours == stock


@needs_mlm
def test_linupper_trains_with_finite_losses_and_our_log_fields(linupper):
    _, lines = linupper
    assert len(lines) == ITERS
    for line in lines:
        for field in ("lm loss", "weighted loss", "ess", "max_weight", "min_weight", "nonfinite"):
            assert math.isfinite(float(line[field])), (field, line)
        assert float(line["reweight r"]) == 1.0
        assert float(line["max_weight"]) > 1.0 > float(line["min_weight"])  # not uniform
    assert float(lines[-1]["lm loss"]) < float(lines[0]["lm loss"])


@needs_mlm
def test_the_two_loops_give_the_same_losses(tmp_path, linupper):
    """Same flags and seed, our loop and Megatron-LM's: every micro-batch loss, bit for bit."""
    ours, _ = train(tmp_path, "ours", *LINUPPER)
    assert ours == linupper[0]
    uniform_ours, _ = train(tmp_path, "ours_uniform")
    uniform_mlm, _ = train(tmp_path, "mlm_uniform", "--trainer", "megatron-lm")
    assert uniform_ours == uniform_mlm


@needs_mlm
def test_data_parallel_2_x_micro_batch_2_equals_1_x_4(tmp_path, linupper):
    """One reweighting group of 4 samples either way: the same weights, losses and updates."""
    _, one_rank = train(tmp_path, "dp1", "--trainer", "megatron-lm", *LINUPPER, nproc=1, micro_batch=4)
    for two, one in zip(linupper[1], one_rank, strict=True):
        for field in ("lm loss", "weighted loss", "max_weight", "ess"):
            assert float(two[field]) == pytest.approx(float(one[field]), rel=2e-6), field


@needs_mlm
def test_save_and_resume_is_bit_exact(tmp_path, linupper):
    """Checkpoint at 5 and stop, resume to 10: the losses of the uninterrupted run (dropout on)."""
    ckpt = str(tmp_path / "ckpt")
    flags = ["--trainer", "megatron-lm", *LINUPPER, "--save", ckpt, "--save-interval", "5"]
    first, _ = train(tmp_path, "first", *flags, "--exit-interval", "5")
    second, _ = train(tmp_path, "second", *flags, "--load", ckpt)
    assert [a + b for a, b in zip(first, second)] == linupper[0]


def entry_point(*flags):
    return subprocess.run([sys.executable, "pretrain_llama.py", *FLAGS, "--trainer", "megatron-lm", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})


@pytest.mark.skipif(HAVE_MLM, reason="megatron.training is installed: the trainer is available")
def test_refused_in_one_line_without_megatron_training():
    result = entry_point()
    assert result.returncode == 2 and result.stderr.count("error:") == 1
    assert "needs Megatron-LM's loop" in result.stderr and "megatron-core 0.19" in result.stderr


@needs_mlm
@pytest.mark.parametrize("flags, named", [
    (["--metrics-file", "m.jsonl"], "--metrics-file"),
    (["--weight-collapse-min-ess", "0.5"], "--weight-collapse-min-ess"),
    (["--reweight-group", "global-batch"], "--reweight-group"),
    (["--dry-run"], "--dry-run"),
])
def test_what_only_our_loop_does_is_named_in_one_line(flags, named):
    result = entry_point(*flags)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0]


@needs_mlm
def test_our_loops_checkpoint_is_refused_in_one_line(tmp_path):
    ckpt = str(tmp_path / "ours")
    run_torchrun(["pretrain_llama.py", *FLAGS, "--micro-batch-size", "2", "--train-iters", "1", "--save", ckpt,
                  "--save-interval", "1"], 2, timeout=900)
    result = entry_point("--load", ckpt)
    assert result.returncode == 2 and result.stderr.count("error:") == 1
    assert "--trainer megatron-core" in result.stderr
