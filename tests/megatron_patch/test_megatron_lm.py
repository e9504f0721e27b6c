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
def runs(tmp_path_factory):
    """The runs several tests compare, each made once, on first use: ``runs("name")``."""
    tmp, made = tmp_path_factory.mktemp("mlm"), {}
    undo = {"RW_UNDO_WARMUP_DRAWS": "1"}
    flags = {  # name: (flags, environment)
        "mlm uniform": (["--trainer", "megatron-lm"], undo),
        "mlm linupper": (["--trainer", "megatron-lm", *LINUPPER], undo),
        "mlm linupper as is": (["--trainer", "megatron-lm", *LINUPPER], {}),
        # our loop; its checkpoint is also the one Megatron-LM's loop must refuse
        "ours uniform": (["--save", str(tmp / "ours_ckpt"), "--save-interval", str(ITERS)], {}),
        "ours linupper": (LINUPPER, {}),
    }

    def get(name):
        if name not in made:
            made[name] = train(tmp, name.replace(" ", "_"), *flags[name][0], **flags[name][1])
        return made[name]

    get.tmp = tmp
    return get


@needs_mlm
def test_uniform_is_megatron_lms_stock_loss_bit_for_bit(tmp_path, runs):
    ours, _ = runs("mlm uniform")
    stock, _ = train(tmp_path, "stock", "--trainer", "megatron-lm", RW_STOCK_LOSS="1", RW_UNDO_WARMUP_DRAWS="1")
    assert len(ours[0]) == ITERS and ours == stock


@needs_mlm
def test_linupper_trains_with_finite_losses_and_our_log_fields(runs):
    _, lines = runs("mlm linupper")
    assert len(lines) == ITERS
    for line in lines:
        for field in ("lm loss", "weighted loss", "ess", "max_weight", "min_weight", "nonfinite"):
            assert math.isfinite(float(line[field])), (field, line)
        assert float(line["reweight r"]) == 1.0
        assert float(line["max_weight"]) > 1.0 > float(line["min_weight"])  # not uniform
    assert float(lines[-1]["lm loss"]) < float(lines[0]["lm loss"])


@needs_mlm
@pytest.mark.parametrize("strategy", ["uniform", "linupper"])
def test_the_two_loops_give_the_same_losses(runs, strategy):
    """Same flags and seed, our loop and Megatron-LM's: every micro-batch loss, bit for bit, once the
    random draws of Megatron-LM's JIT warm-up are undone."""
    assert runs(f"ours {strategy}")[0] == runs(f"mlm {strategy}")[0]


@needs_mlm
def test_the_jit_warm_up_draws_are_the_only_difference(runs):
    """As Megatron-LM runs (warm-up draws kept) dropout draws other masks from the first step on."""
    as_is, undone = runs("mlm linupper as is")[0], runs("mlm linupper")[0]
    assert as_is[0][0] != undone[0][0]


@needs_mlm
def test_data_parallel_2_x_micro_batch_2_equals_1_x_4(tmp_path, runs):
    """One reweighting group of 4 samples either way: the same weights, losses and updates (no dropout:
    one rank's [4, s] mask is not two ranks' [2, s] masks)."""
    flags = ["--trainer", "megatron-lm", *LINUPPER, "--hidden-dropout", "0"]
    _, two_ranks = train(tmp_path, "dp2", *flags)
    _, one_rank = train(tmp_path, "dp1", *flags, nproc=1, micro_batch=4)
    for two, one in zip(two_ranks, one_rank, strict=True):
        for field in ("lm loss", "weighted loss", "max_weight", "ess"):
            assert float(two[field]) == pytest.approx(float(one[field]), rel=2e-6), field


@needs_mlm
def test_save_and_resume_is_bit_exact(tmp_path, runs):
    """Checkpoint at 5 and stop, resume to 10: the losses of the uninterrupted run (dropout on)."""
    ckpt = str(tmp_path / "ckpt")
    flags = ["--trainer", "megatron-lm", *LINUPPER, "--save", ckpt, "--save-interval", "5"]
    first, _ = train(tmp_path, "first", *flags, "--exit-interval", "5")
    second, _ = train(tmp_path, "second", *flags, "--load", ckpt)
    assert [a + b for a, b in zip(first, second)] == runs("mlm linupper as is")[0]


def entry_point(*flags):
    """``python pretrain_llama.py ... --trainer megatron-lm`` as a user types it (refused before any group)."""
    return subprocess.run([sys.executable, "pretrain_llama.py", *FLAGS, "--trainer", "megatron-lm", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})


def one_error_line(result) -> str:
    """The run's one ``error:`` line (exit status 2, no traceback; import warnings may come before it)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


@pytest.mark.skipif(HAVE_MLM, reason="megatron.training is installed: the trainer is available")
def test_refused_in_one_line_without_megatron_training():
    line = one_error_line(entry_point())
    assert "needs Megatron-LM's loop" in line and "megatron-core 0.19" in line


@needs_mlm
def test_what_only_our_loop_does_is_named_in_one_line():
    line = one_error_line(entry_point("--metrics-file", "m.jsonl", "--weight-collapse-min-ess", "0.5",
                                      "--reweight-group", "global-batch", "--dry-run"))
    for flag in ("--metrics-file", "--weight-collapse-min-ess", "--reweight-group", "--dry-run"):
        assert flag in line


@needs_mlm
def test_our_loops_checkpoint_is_refused_in_one_line(runs):
    runs("ours uniform")
    line = one_error_line(entry_point("--load", str(runs.tmp / "ours_ckpt")))
    assert "--trainer megatron-core" in line


@needs_mlm
def test_a_missing_megatron_training_symbol_is_one_line(monkeypatch):
    """A megatron-core whose megatron.training renamed what we call: refused before any group, by name."""
    from megatron_patch import megatron_lm
    from megatron_patch.errors import ArgumentError
    from tests.helpers.config import tiny_config

    monkeypatch.setitem(megatron_lm.REQUIRED, "megatron.training.training", {"pretrain_renamed": ()})
    with pytest.raises(ArgumentError, match="megatron.training.training.pretrain_renamed"):
        megatron_lm.check_supported(tiny_config("--trainer", "megatron-lm"), ["--trainer", "megatron-lm"])
