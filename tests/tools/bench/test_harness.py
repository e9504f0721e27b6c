"""tools.bench.harness: the flag split, the synthetic batch, the steady-state step time, the machine line."""

import json
import platform

import pytest

from megatron_patch.logging_utils import read_metrics
from tools.bench.harness import machine, runs_parser, split_extra, steady_ms_per_iter, synthetic_batch

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_steady_ms_per_iter_leaves_out_warmup(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"kind": "train", "iteration": i, "ms_per_iter": ms} for i, ms in [(1, 900.0), (2, 10.0), (3, 30.0), (4, 20.0)]]
    path.write_text("\n".join(json.dumps(r) for r in [*rows, {"kind": "valid", "iteration": 4}]) + "\n")
    assert steady_ms_per_iter(read_metrics(str(path), "train"), skip_iters=1) == 20.0
    with pytest.raises(ValueError, match="--train-iters"):
        steady_ms_per_iter(read_metrics(str(path), "train"), skip_iters=4)


def test_split_extra():
    assert split_extra(["--rounds", "3", "--", "--micro-batch-size", "8", "--"]) == (
        ["--rounds", "3"], ["--micro-batch-size", "8", "--"])
    assert split_extra(("--rounds", "3")) == (["--rounds", "3"], [])


def test_synthetic_batch_is_a_shifted_token_stream():
    batch = synthetic_batch(3, 16, vocab_size=50, seed=4)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "tokens": (3, 16), "labels": (3, 16), "loss_mask": (3, 16), "position_ids": (3, 16)}
    assert batch["tokens"][:, 1:].tolist() == batch["labels"][:, :-1].tolist()
    assert 0 <= int(batch["tokens"].min()) and int(batch["tokens"].max()) < 50
    assert batch["loss_mask"].sum() == 3 * 16 and batch["position_ids"][2].tolist() == list(range(16))
    assert batch["tokens"].tolist() == synthetic_batch(3, 16, vocab_size=50, seed=4)["tokens"].tolist()


def test_machine_line():
    line = machine()
    assert "cores usable, load average" in line and f"Python {platform.python_version()}" in line


def test_runs_parser_flags_and_defaults():
    args = runs_parser("Title line.\n\nMore text.").parse_args(["--rounds", "3"])
    assert vars(args) == {"rounds": 3, "train_iters": 40, "skip_iters": 10, "nproc": 2}
    assert runs_parser("Title line.\n\nMore text.").description == "Title line."
