"""Checkpoint markers, the resume guards and the run record (the loading itself: tests/e2e/test_resume.py)."""

import json

import pytest

from megatron_patch.checkpointing import MARKER, LoopState, check_resume, load_checkpoint, read_marker, write_run_record
from megatron_patch.errors import ArgumentError
from tests.helpers.config import tiny_config


def test_marker_states(tmp_path):
    assert read_marker(str(tmp_path / "missing")) is None
    assert read_marker(str(tmp_path)) is None  # empty: a fresh start
    (tmp_path / "iter_0000002").mkdir()
    with pytest.raises(ArgumentError, match=f"no {MARKER}"):
        read_marker(str(tmp_path))  # an interrupted first save
    (tmp_path / MARKER).write_text("banana")
    with pytest.raises(ArgumentError, match="not an iteration"):
        read_marker(str(tmp_path))
    (tmp_path / MARKER).write_text("2")
    assert read_marker(str(tmp_path)) == 2
    (tmp_path / "iter_0000002" / "model.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ArgumentError, match="not a readable checkpoint of this project"):
        load_checkpoint(str(tmp_path), model=None, optimizer=None)  # foreign: fails before touching the model
    (tmp_path / MARKER).write_text("5")
    with pytest.raises(ArgumentError, match="iter_0000005 is missing"):
        load_checkpoint(str(tmp_path), model=None, optimizer=None)


def test_resume_guards_refuse_another_group_or_blend():
    blend = {"prefixes": ["a", "b"], "weights": [0.3, 0.7]}
    saved = LoopState(layout={"dp": 2, "tp": 1, "pp": 1, "cp": 1}, blend=blend)
    check_resume(saved, LoopState(layout={"dp": 2, "tp": 2, "pp": 1, "cp": 1}, blend=blend), override_blend=False)
    with pytest.raises(ArgumentError, match="data-parallel size 2, this run has 4"):
        check_resume(saved, LoopState(layout={"dp": 4}, blend=blend), override_blend=False)
    other = {"prefixes": ["a", "b"], "weights": [0.5, 0.5]}
    with pytest.raises(ArgumentError, match="--override-data-blend"):
        check_resume(saved, LoopState(layout={"dp": 2}, blend=other), override_blend=False)
    check_resume(saved, LoopState(layout={"dp": 2}, blend=other), override_blend=True)


def test_run_record_holds_the_resolved_configuration(tmp_path):
    config = tiny_config("--reweight-strategy", "linupper", "--reweight-r", "0.4", "--micro-batch-size", "2",
                         world_size=2)
    path = write_run_record(str(tmp_path), config, start_iteration=3)
    record = json.loads(open(path).read())
    assert record["start_iteration"] == 3 and record["seed"] == 1234
    assert record["layout"] == {"dp": 2, "tp": 1, "pp": 1, "cp": 1, "world_size": 2}
    assert record["config"]["model"]["hidden_size"] == 128 and record["config"]["training"]["global_batch_size"] == 4
    assert record["reweighting"] == {"strategy": "linupper", "delta": 1.0, "group": "micro-batch", "target_r": 0.4,
                                     "warmup_iters": 0,
                                     "warmup_mode": "uniform", "warmup_r": 100.0, "ramp_iters": 0}
    assert not list(tmp_path.glob("*.tmp-*"))  # written through a temporary file


def _main_weights_follow_the_loaded_weights(root, extra):
    """Save perturbed bf16 weights, then resume another run (other seed) with --no-load-optim: returns how far
    the optimizer's fp32 main weights are from the loaded weights (written back over them, as a step does)."""
    import torch

    from megatron_patch import checkpointing
    from megatron_patch.distributed import set_seeds
    from megatron_patch.model import gpt_model_provider
    from megatron_patch.training import build_model_and_optimizer

    def built(*flags):
        config = tiny_config("--bf16", *extra, *flags)
        set_seeds(config.training.seed)
        return (config, *build_model_and_optimizer(gpt_model_provider, config))

    _, model, optimizer, _ = built()
    checkpointing.give_optimizer_state(optimizer)  # a distributed optimizer saves only once it has state
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)  # far from any initialisation
    checkpointing.save_checkpoint(str(root), model, optimizer, LoopState(iteration=1, layout={"dp": 1}), log=str)
    config, model, optimizer, scheduler = built("--load", str(root), "--no-load-optim", "--seed", "7")
    checkpointing.resume(config, model, optimizer, scheduler, LoopState(layout={"dp": 1}))
    loaded = [p.detach().float().clone() for p in model.parameters()]
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        sub._copy_main_params_to_model_params()
    return max((p.float() - q).abs().max().item() for p, q in zip(model.parameters(), loaded))


@pytest.mark.parametrize("extra", [(), ("--use-distributed-optimizer",)], ids=["adam", "distributed"])
def test_no_load_optim_gives_bf16_main_weights_the_loaded_weights(tmp_path, run_distributed, extra):
    # Before: the fp32 main weights kept the new run's initialisation, and the first step wrote it back.
    [gap] = run_distributed(_main_weights_follow_the_loaded_weights, world_size=1, root=tmp_path / "ckpt", extra=extra)
    assert gap == 0.0


def _save_twice_and_list_helper_processes(root):
    """Two saves of a tiny model: the class names of this rank's helper processes after them."""
    import multiprocessing

    from megatron_patch import checkpointing
    from megatron_patch.distributed import set_seeds
    from megatron_patch.model import gpt_model_provider
    from megatron_patch.training import build_model_and_optimizer

    config = tiny_config()
    set_seeds(config.training.seed)
    model, optimizer, _ = build_model_and_optimizer(gpt_model_provider, config)
    checkpointing.give_optimizer_state(optimizer)
    for iteration in (1, 2):
        checkpointing.save_checkpoint(str(root), model, optimizer, LoopState(iteration=iteration, layout={"dp": 1}),
                                      log=str)
    return sorted(type(p).__name__ for p in multiprocessing.active_children())


def test_saves_start_no_spawned_interpreter(tmp_path, run_distributed):
    # megatron-core's own writer-results queue lives in a spawned manager (SpawnProcess), which
    # re-imports the training script and megatron-core before the first save can finish (about 3.5 s on 2 cores).
    [children] = run_distributed(_save_twice_and_list_helper_processes, world_size=1, root=tmp_path / "ckpt")
    assert children == ["ForkProcess"], children  # one forked manager, kept for the second save
    assert read_marker(str(tmp_path / "ckpt")) == 2
