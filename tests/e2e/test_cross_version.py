"""Checkpoints across the tested megatron-core releases, on committed checkpoints each release wrote
(tests/helpers/checkpoint_fixture.py regenerates them): a 0.16.1 checkpoint loads into the same
weights and resumes training under either release; 0.16.1 refuses a 0.19 checkpoint in one line."""

import json
import math
import os
import shutil

import pytest
import torch

from megatron_patch import checkpointing
from megatron_patch.errors import ArgumentError
from megatron_patch.version_guard import installed_version
from tests.helpers.checkpoint_fixture import (RESUMED_ITERS, SAVED_ITERATION, fixture_dir, flags, loaded_parameters,
                                              train, train_losses)

OLD, NEW = "0.16.1", "0.19.2"
INSTALLED = installed_version()
ON_OLD = INSTALLED.startswith("0.16.")


def _copy(version, tmp_path) -> str:
    """A private copy of the checkpoint directory of ``version``'s fixture (a resume writes into it)."""
    copy = str(tmp_path / f"ckpt-{version}")
    shutil.copytree(os.path.join(fixture_dir(version), "ckpt"), copy)
    return copy


@pytest.mark.parametrize("version", [OLD, NEW])
def test_checkpoint_loads_into_the_weights_it_was_saved_with(version, tmp_path):
    if ON_OLD and version == NEW:
        pytest.skip("megatron-core 0.16.1 cannot read a 0.19 checkpoint: "
                    "test_a_0_19_checkpoint_is_refused_by_0_16_1_in_one_line")
    loaded = loaded_parameters(version, _copy(version, tmp_path))
    saved = torch.load(os.path.join(fixture_dir(version), "weights.pt"))
    assert loaded["iteration"] == SAVED_ITERATION
    assert loaded["parameters"].keys() == saved.keys()
    different = [name for name, p in saved.items() if not torch.equal(loaded["parameters"][name], p)]
    assert not different, f"megatron-core {INSTALLED} loads other values than {version} did: {different}"


def test_training_resumes_from_a_0_16_1_checkpoint(tmp_path):
    ckpt = _copy(OLD, tmp_path)
    train(OLD, ckpt, str(tmp_path / "metrics.jsonl"))
    losses = train_losses(str(tmp_path / "metrics.jsonl"))
    assert sorted(losses) == list(range(SAVED_ITERATION + 1, RESUMED_ITERS + 1))  # resumed, not restarted
    assert all(math.isfinite(loss) for loss in losses.values())
    with open(os.path.join(fixture_dir(OLD), "continued.json")) as f:
        expected = {int(i): loss for i, loss in json.load(f)["lm_loss"].items()}
    # The same data, weights, optimizer and RNG state: the losses 0.16.1 had when it resumed the run.
    assert losses == pytest.approx(expected, rel=1e-6)
    assert os.path.isdir(checkpointing.checkpoint_dir(ckpt, RESUMED_ITERS))


def test_a_0_19_checkpoint_is_refused_by_0_16_1_in_one_line(tmp_path, monkeypatch, capsys):
    from megatron.core import dist_checkpointing

    from megatron_patch.training import pretrain

    ckpt = _copy(NEW, tmp_path)
    path = checkpointing.checkpoint_dir(ckpt, SAVED_ITERATION)
    assert "common.pt" not in os.listdir(path)  # 0.19 keeps the common state inside the .distcp files
    if ON_OLD:  # the refusal is needed: 0.16.1's own reader fails on it
        with pytest.raises(Exception):
            dist_checkpointing.load_common_state_dict(path)
    else:  # the same check, as 0.16.1 would run it
        monkeypatch.setattr(checkpointing, "installed_version", lambda: OLD)
    with pytest.raises(ArgumentError) as err:
        checkpointing.check_load_dir(ckpt, None)
    assert str(err.value) == (
        f"--load {ckpt}: {path} was written by megatron-core {NEW}, which keeps its common state inside the "
        f".distcp files; megatron-core {OLD} reads only common.pt and cannot load it: resume it under "
        "megatron-core 0.19 (Python >= 3.12; make test builds .venv312)")
    # The entry point: that line, once, before any process group starts.
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        pretrain(None, None, None, family="llama", argv=[*flags(NEW), "--load", ckpt])
    assert exit_info.value.code == 2 and not torch.distributed.is_initialized()
    assert capsys.readouterr().err.splitlines() == [f"error: {err.value}"]


def test_a_0_19_checkpoint_without_versions_json_is_refused_too(tmp_path, monkeypatch):
    # Imported weights (tools/convert_checkpoint.py --from-hf) carry no versions.json.
    ckpt = _copy(NEW, tmp_path)
    os.remove(os.path.join(checkpointing.checkpoint_dir(ckpt, SAVED_ITERATION), checkpointing.VERSIONS))
    monkeypatch.setattr(checkpointing, "installed_version", lambda: OLD)
    with pytest.raises(ArgumentError, match="was written by megatron-core 0.19 or newer, .* reads only common.pt"):
        checkpointing.check_load_dir(ckpt, None)
