"""Bad input: every mistake of docs/errors.md stops the run with one `error:` line naming the flag
or file and what to do, exit status 2, before any process group starts (so in-process here)."""

import os
import shutil

import pytest
import torch

from megatron_patch.checkpointing import MARKER
from megatron_patch.training import pretrain

MOCK = ["--model", "tiny", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "512",
        "--seq-length", "64", "--max-position-embeddings", "64", "--train-iters", "2"]


def _error(capsys, monkeypatch, argv, *, world_size=1, family="llama", rank=0) -> str:
    """Run ``pretrain`` with ``argv`` as one rank of ``world_size``; return its single error line."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", str(rank))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        pretrain(None, None, None, family=family, argv=argv)  # providers are never reached
    assert exit_info.value.code == 2
    assert not torch.distributed.is_initialized()  # refused before any process group
    out = capsys.readouterr()
    lines = out.err.splitlines()
    if rank:
        assert not lines  # one copy of the line per job, from rank 0
        return ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and not out.out, out
    return lines[0]


@pytest.fixture
def prefix(fixture_data, tmp_path):
    """A private copy of one training prefix of the fixture dataset, free to damage."""
    source = fixture_data["train_data_path"].split()[-1]
    copy = str(tmp_path / os.path.basename(source))
    for ext in (".idx", ".bin"):
        shutil.copy(source + ext, copy + ext)
    return copy


def _data(fixture_data, prefix) -> list[str]:
    return ["--model", "tiny", "--seq-length", "64", "--max-position-embeddings", "64", "--train-iters", "2",
            "--data-path", prefix, "--tokenizer-model", fixture_data["tokenizer_model"]]


def _cut(path, end):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:end])


def test_data_files(capsys, monkeypatch, fixture_data, prefix, tmp_path):
    flags = _data(fixture_data, prefix)
    missing = [*flags[:-4], "--data-path", str(tmp_path / "nowhere"), *flags[-2:]]
    assert _error(capsys, monkeypatch, missing) == (
        f"error: --data-path: {tmp_path / 'nowhere'}.idx does not exist; build it with tools/preprocess_data.py")
    valid = [*flags, "--valid-data-path", str(tmp_path / "nowhere_valid")]
    assert "--valid-data-path: " in _error(capsys, monkeypatch, valid)

    shutil.copy(prefix + ".bin", prefix + ".bin.good")
    with open(prefix + ".bin", "ab") as f:
        f.write(b"\0" * 10)  # a .bin of another build than its .idx
    assert "does not match its .idx" in _error(capsys, monkeypatch, flags)
    shutil.copy(prefix + ".bin.good", prefix + ".bin")
    _cut(prefix + ".bin", -100)
    assert f"{prefix}.bin is truncated" in _error(capsys, monkeypatch, flags)

    shutil.copy(prefix + ".idx", prefix + ".idx.good")
    _cut(prefix + ".idx", -8)
    line = _error(capsys, monkeypatch, flags)
    assert f"--data-path: {prefix}.idx is corrupt or truncated (" in line and "rebuild it" in line
    with open(prefix + ".idx", "wb") as f:
        f.write(os.urandom(200))
    assert "(no Megatron index header)" in _error(capsys, monkeypatch, flags)


def test_tokenizer_larger_than_model(capsys, monkeypatch, fixture_data, prefix):
    line = _error(capsys, monkeypatch, [*_data(fixture_data, prefix), "--vocab-size", "100"])
    assert "--tokenizer-model has 1024 tokens, more than --vocab-size 100; raise --vocab-size" in line


@pytest.mark.parametrize("argv, world_size, family, expected", [
    (["--micro-batch-size", "4", "--global-batch-size", "6"], 1, "llama",
     "--global-batch-size 6 is not divisible by --micro-batch-size 4 x data-parallel size 1; use a multiple of 4"),
    (["--tensor-model-parallel-size", "3"], 3, "llama", "--tensor-model-parallel-size 3 does not divide --num-attention-heads 4"),
    (["--group-query-attention", "--num-query-groups", "1", "--tensor-model-parallel-size", "2"], 2, "llama",
     "--tensor-model-parallel-size 2 does not divide --num-query-groups 1"),
    (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6, "llama",
     "world size 6 is not divisible by --tensor-model-parallel-size 2 x --pipeline-model-parallel-size 2"),
    (["--model", "gpt2-mini", "--seq-length", "128"], 1, "gpt",
     "--seq-length 128 is above --max-position-embeddings 64; raise --max-position-embeddings"),
    (["--reweight-strategy", "linupper", "--reweight-r", "0"], 1, "llama", "--reweight-r 0.0: "),
    (["--reweight-strategy", "linupper", "--reweight-r", "-1"], 1, "llama", "--reweight-r -1.0: "),
    (["--reweight-strategy", "softmax"], 1, "llama", "--reweight-strategy: invalid choice: 'softmax' (choose from"),
    (["--context-parallel-size", "2", "--reweight-strategy", "linupper"], 2, "llama",
     "--context-parallel-size 2 needs Transformer Engine's attention"),
    (["--save", "/dev/null/ckpt"], 1, "llama", "--save /dev/null/ckpt: /dev/null is not a writable directory"),
])
def test_flags(capsys, monkeypatch, argv, world_size, family, expected):
    assert expected in _error(capsys, monkeypatch, [*MOCK, *argv], world_size=world_size, family=family)


def test_only_rank_0_prints(capsys, monkeypatch):
    _error(capsys, monkeypatch, [*MOCK, "--reweight-strategy", "softmax"], world_size=2, rank=1)


def test_load_directories(capsys, monkeypatch, tmp_path):
    load = tmp_path / "load"
    load.mkdir()
    # Empty: a fresh start only where the run also saves (the first attempt of a requeued job).
    line = _error(capsys, monkeypatch, [*MOCK, "--load", str(load), "--save", str(tmp_path / "elsewhere")])
    assert f"--load {load}: no checkpoint there (no {MARKER}); point --load at a checkpoint directory" in line
    assert "no checkpoint there" in _error(capsys, monkeypatch, [*MOCK, "--load", str(tmp_path / "missing")])

    (load / "iter_0000100").mkdir()
    (load / "iter_0000100" / "model_optim_rng.pt").write_bytes(b"\0" * 64)  # a foreign (legacy) layout
    assert f"has iter_* directories but no {MARKER}" in _error(capsys, monkeypatch, [*MOCK, "--load", str(load)])
    (load / MARKER).write_text("release")
    assert "holds 'release', not an iteration" in _error(capsys, monkeypatch, [*MOCK, "--load", str(load)])
    (load / MARKER).write_text("200")
    assert "names iteration 200 but" in _error(capsys, monkeypatch, [*MOCK, "--load", str(load)])
    (load / MARKER).write_text("100")
    line = _error(capsys, monkeypatch, [*MOCK, "--load", str(load)])
    assert f"--load {load}: {load / 'iter_0000100'} is not a readable checkpoint of this project (" in line
    assert line.endswith("point --load elsewhere")

