"""Checkpoints: megatron-core ``dist_checkpointing`` for model and optimizer, plus the loop state.

Layout under ``--save``::

    iter_0000100/                      dist_checkpointing directory (model + optimizer shards and
                                       the loop state of :class:`LoopState`: in common.pt under
                                       megatron-core 0.16.1, inside the .distcp files under 0.19)
    iter_0000100/rng/rank_00003.pt     each rank's RNG states
    iter_0000100/versions.json         the torch and megatron-core versions that wrote it
    latest_checkpointed_iteration.txt  written last, atomically, after every rank finished

``run.json`` beside them is the run record (every resolved setting, package versions, git commit,
layout, seed), rewritten atomically at each start.

Every rank writes into ``iter_0000100.partial/``; once all have finished, rank 0 renames it to
``iter_0000100/`` and then rewrites the marker. A save killed half way therefore leaves only a
``.partial`` directory (ignored at load, removed by the next save), and the marker still names the
previous checkpoint; a save killed between the rename and the marker leaves a complete directory
that the marker does not name yet (replaced when that iteration is saved again).

Resuming (:func:`resume`) loads the latest checkpoint of ``--load`` and refuses one whose
data-parallel size or data blend differs from this run's: a different DP size changes the
reweighting group (micro batch x DP samples) and the data order, a different blend silently
repeats or skips data (Megatron-LM issue 457). ``--override-data-blend`` accepts a new blend
knowingly; the consumed samples are then counted against the new blend.

Across megatron-core versions: 0.19 loads a checkpoint that 0.16.1 wrote (it still reads
common.pt; tests/e2e/test_cross_version.py), 0.16.1 cannot load one of 0.19 and refuses it in one
line before reading any tensor.
"""

import dataclasses
import importlib.metadata
import json
import multiprocessing
import os
import re
import shutil
import subprocess

import torch
from megatron.core import dist_checkpointing

from .distributed import print_rank0, rng_state, set_rng_state
from .errors import ArgumentError, one_line
from .files import write_atomically, write_json_atomically
from .version_guard import installed_version

MARKER = "latest_checkpointed_iteration.txt"
PARTIAL = ".partial"  # suffix of a checkpoint directory still being written
FORMAT_TAG = "megatron-reweighting-v1"
VERSIONS = "versions.json"  # in each checkpoint directory: who wrote it
# Before this release megatron-core reads a checkpoint's common state only from common.pt
# (0.16.1); 0.19 writes it into the .distcp files instead and reads both.
COMMON_STATE_IN_DISTCP = (0, 19)


@dataclasses.dataclass
class LoopState:
    """Everything besides weights and optimizer that an exact resume needs."""

    iteration: int = 0
    consumed_samples: int = 0
    skipped_iterations: int = 0
    scheduler: dict = dataclasses.field(default_factory=dict)
    reweight: dict = dataclasses.field(default_factory=dict)
    blend: dict = dataclasses.field(default_factory=dict)  # prefixes, weights (sampling probabilities)
    consumed_per_dataset: dict = dataclasses.field(default_factory=dict)  # domain name -> samples drawn
    layout: dict = dataclasses.field(default_factory=dict)  # dp, tp, pp, cp
    # Weights without optimizer, RNG or data position (tools/convert_checkpoint.py --from-hf):
    # --load starts from them at iteration 0 with a fresh optimizer and schedule.
    weights_only: bool = False


def checkpoint_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def read_marker(root: str) -> int | None:
    """The latest complete iteration under ``root``; None when there is no checkpoint yet."""
    path = os.path.join(root, MARKER)
    if not os.path.exists(path):
        if os.path.isdir(root) and any(name.startswith("iter_") and not name.endswith(PARTIAL)
                                       for name in os.listdir(root)):
            raise ArgumentError(
                f"--load {root}: has iter_* directories but no {MARKER} (an interrupted first save, or not "
                "a checkpoint of this project); remove them or point --load elsewhere"
            )
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise ArgumentError(f"--load {root}: {MARKER} holds {text[:40]!r}, not an iteration; is this a checkpoint "
                            "of this project? Point --load elsewhere")
    iteration = int(text)
    if not os.path.isdir(checkpoint_dir(root, iteration)):
        raise ArgumentError(f"--load {root}: {MARKER} names iteration {iteration} but {checkpoint_dir(root, iteration)} "
                            f"is missing; write the iteration of an existing iter_* directory into {MARKER}")
    return iteration


def check_load_dir(load: str, save: str | None) -> None:
    """Refuse, before any process group starts, a ``--load`` that holds nothing to resume from.

    A directory without a checkpoint is a fresh start only when it is also ``--save`` (the first
    attempt of a job that saves and resumes in one place, as the sbatch scripts do); a different
    directory without one is a wrong path, and starting from scratch would hide that.
    """
    iteration = read_marker(load)
    if iteration is None:
        if save is None or os.path.abspath(load) != os.path.abspath(save):
            raise ArgumentError(f"--load {load}: no checkpoint there (no {MARKER}); point --load at a checkpoint "
                                "directory, or pass the same directory as --save to start fresh in it")
        return
    _read_common(load, checkpoint_dir(load, iteration))


def _release(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _refuse_newer_format(root: str, path: str) -> None:
    """One line for a checkpoint this megatron-core cannot read: its common state is inside the
    .distcp files (written by 0.19), and this release reads only common.pt."""
    installed = installed_version()
    if _release(installed) >= COMMON_STATE_IN_DISTCP or not os.path.isdir(path):
        return
    names = os.listdir(path)
    if "common.pt" in names or not any(name.endswith(".distcp") for name in names):
        return  # readable, or not a dist_checkpointing directory at all (_read_common says so)
    try:
        with open(os.path.join(path, VERSIONS)) as f:
            written = json.load(f).get("megatron-core") or "0.19 or newer"
    except (OSError, ValueError):  # imported weights, or saved before versions.json existed
        written = "0.19 or newer"
    raise ArgumentError(f"--load {root}: {path} was written by megatron-core {written}, which keeps its common "
                        f"state inside the .distcp files; megatron-core {installed} reads only common.pt and cannot "
                        "load it: resume it under megatron-core 0.19 (Python >= 3.12; make test builds .venv312)")


def _read_common(root: str, path: str) -> dict:
    """The common (non-sharded) state of checkpoint ``path``, refused unless it carries our format tag."""
    _refuse_newer_format(root, path)
    try:
        common = dist_checkpointing.load_common_state_dict(path)
    except Exception as err:  # noqa: BLE001 - no readable common state: not ours, or damaged
        raise ArgumentError(f"--load {root}: {path} is not a readable checkpoint of this project "
                            f"({one_line(err)}); point --load elsewhere") from err
    if not isinstance(common, dict) or common.get("format") != FORMAT_TAG:
        raise ArgumentError(f"--load {root}: {path} is not a checkpoint of this project (no {FORMAT_TAG!r} tag); "
                            "point --load elsewhere")
    return common


def give_optimizer_state(optimizer) -> None:
    """Give a fresh distributed optimizer the state a checkpoint is loaded into.

    Its ``sharded_state_dict`` reads Adam's ``step`` from the state of torch's Adam (what it uses
    without Apex or Transformer Engine), which is empty until the first step: loading into a new
    run failed there. megatron-core's own remedy (a step with zero gradients, as it does for
    Megatron-FSDP) creates the state; every value it touches is then overwritten by the load.
    """
    from megatron.core.optimizer import distrib_optimizer

    if getattr(distrib_optimizer, "HAVE_APEX_OR_TE", False):  # their Adam keeps step in the groups
        return
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(sub, distrib_optimizer.DistributedOptimizer) and not sub.optimizer.state:
            sub._init_optimizer_states_with_dummy_values()


def restore_adam_steps(optimizer) -> None:
    """Give every parameter its own, loaded Adam ``step`` after a distributed optimizer's load.

    Without Apex or Transformer Engine, megatron-core 0.16.1's distributed optimizer keeps the
    step of torch's Adam in its param groups in the checkpoint, and on load (a) puts ONE tensor
    in every parameter's state, which torch then increments once per parameter, and (b) copies
    the per-parameter state over it from the template a fresh optimizer had (the value before
    the load). Either way the first updates after a resume used wrong bias corrections; the
    resume test caught it. The loaded group step is the truth: each state gets its own copy.
    """
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", sub)
        for group in inner.param_groups:
            if group.get("step") is None:
                continue
            for param in group["params"]:
                state = inner.state.get(param)
                if state and isinstance(state.get("step"), torch.Tensor):
                    state["step"] = torch.tensor(float(group["step"]), dtype=state["step"].dtype,
                                                 device=state["step"].device)


def _sharded_state(model, optimizer, is_loading: bool) -> dict:
    if is_loading:
        give_optimizer_state(optimizer)
    model_sd = model.module.sharded_state_dict()
    # dp_reshardable: the sharding type torch_dist accepts for the distributed optimizer.
    opt_sd = optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                          metadata={"distrib_optim_sharding_type": "dp_reshardable"})
    return {"model": model_sd, "optimizer": opt_sd}


def fork_write_results_queue() -> None:
    """Start dist_checkpointing's writer-results queue from a forked process, once per process.

    Every torch_dist save reports its writers' results through a ``Manager().Queue()`` that
    megatron-core makes on first use from a *spawned* process. A spawned interpreter re-imports the
    training script, megatron-core included, before it serves the queue: about 3.5 s at a run's
    first save on a 2-core CPU, on every rank, and up to a second more to stop it at exit. A forked manager
    serves the same queue at once; Megatron-LM's own async-checkpoint setup makes it this way
    (``get_write_results_queue(mp_mode="fork")`` in megatron.training.async_utils, 0.19). The
    writers themselves are forked by megatron-core on every save either way.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = multiprocessing.get_context("fork").Manager().Queue()


def save_checkpoint(root: str, model, optimizer, state: LoopState, log=print) -> None:
    """Save on every rank into ``iter_N.partial``; rank 0 renames it and writes the marker after all finished."""
    rank = torch.distributed.get_rank()
    path = checkpoint_dir(root, state.iteration)
    partial = path + PARTIAL
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):  # left by killed saves; each may be as large as a checkpoint
            if name.startswith("iter_") and name.endswith(PARTIAL):
                shutil.rmtree(os.path.join(root, name))
        os.makedirs(partial)
    torch.distributed.barrier()
    log(f"saving checkpoint at iteration {state.iteration} to {path}")
    sharded = _sharded_state(model, optimizer, is_loading=False)
    sharded["loop"] = dataclasses.asdict(state)
    sharded["format"] = FORMAT_TAG
    fork_write_results_queue()
    dist_checkpointing.save(sharded, partial)
    os.makedirs(os.path.join(partial, "rng"), exist_ok=True)
    torch.save(rng_state(), os.path.join(partial, "rng", f"rank_{rank:05d}.pt"))
    if rank == 0:
        write_json_atomically(os.path.join(partial, VERSIONS), _versions(), indent=1)
    torch.distributed.barrier()
    if rank == 0:
        if os.path.exists(path):  # complete but never marked (killed before the marker), or damaged
            shutil.rmtree(path)
        os.rename(partial, path)
        write_atomically(os.path.join(root, MARKER), str(state.iteration))
    torch.distributed.barrier()
    log(f"saved checkpoint at iteration {state.iteration}")


def _check_finite(model, path: str) -> None:
    """Refuse weights with NaN/Inf (a damaged shard, or a run saved after it diverged)."""
    finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all().float().view(1)
    torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)  # every stage's verdict
    if not finite.item():
        raise ArgumentError(f"--load: {path} holds non-finite weights; resume from an earlier iteration "
                            f"(write it into {MARKER})")


def load_checkpoint(root: str, model, optimizer, *, load_optim: bool = True, load_rng: bool = True) -> LoopState | None:
    """Load the latest checkpoint under ``root`` into ``model``/``optimizer``; None if there is none."""
    iteration = read_marker(root)
    if iteration is None:
        return None
    path = checkpoint_dir(root, iteration)
    common = _read_common(root, path)
    weights_only = common["loop"].get("weights_only", False)
    load_optim = load_optim and not weights_only
    # Without the optimizer, not even its template (a fresh distributed optimizer takes a step to make one).
    sharded = _sharded_state(model, optimizer, is_loading=True) if load_optim else \
        {"model": model.module.sharded_state_dict()}
    try:
        loaded = dist_checkpointing.load(sharded, path)
    except Exception as err:  # noqa: BLE001 - any read failure is a damaged checkpoint to the user
        fix = ("pass the model flags its run.json lists (model_flags)" if weights_only else
               f"remove it and write the previous iteration into {MARKER}, or point --load elsewhere")
        raise ArgumentError(f"--load {root}: {path} cannot be read ({one_line(err)}); {fix}") from err
    with torch.no_grad():  # fp32 with the distributed optimizer: its shards are views of the weights
        model.module.load_state_dict(loaded["model"])
        if load_optim:
            optimizer.load_state_dict(loaded["optimizer"])
            restore_adam_steps(optimizer)
        else:  # bf16/fp16: the fp32 main weights were copied from the initial weights; take the loaded ones
            optimizer.reload_model_params()
    _check_finite(model, path)
    rank_file = os.path.join(path, "rng", f"rank_{torch.distributed.get_rank():05d}.pt")
    if load_rng and os.path.exists(rank_file):
        set_rng_state(torch.load(rank_file, weights_only=False))
    return LoopState(**common["loop"])


def resume(config, model, optimizer, scheduler, state: LoopState) -> None:
    """Load the latest checkpoint of ``--load`` into everything, or start fresh when there is none.

    Raises :class:`ArgumentError` (every rank reads the same files, so every rank stops) for a
    checkpoint that is damaged or would silently change the reweighting group or the data.
    """
    ckpt = config.checkpoint
    loaded = load_checkpoint(ckpt.load, model, optimizer, load_optim=not ckpt.no_load_optim,
                             load_rng=not ckpt.no_load_rng)
    if loaded is None:
        print_rank0(f"--load {ckpt.load}: no checkpoint there yet, starting from iteration 0")
        return
    if loaded.weights_only:
        print_rank0(f"--load {ckpt.load}: weights only (an imported model), starting from them at iteration 0 "
                    "with a fresh optimizer and schedule")
        return
    check_resume(loaded, state, override_blend=ckpt.override_data_blend)
    if not ckpt.no_load_optim:
        scheduler.load_state_dict(loaded.scheduler)
    if loaded.reweight != state.reweight:
        print_rank0(f"note: reweighting changed at resume: checkpoint {loaded.reweight}, now {state.reweight}")
    state.iteration, state.consumed_samples = loaded.iteration, loaded.consumed_samples
    state.skipped_iterations = loaded.skipped_iterations
    per_dataset = ", ".join(f"{name} {n}" for name, n in loaded.consumed_per_dataset.items())
    print_rank0(f"resumed from {ckpt.load} at iteration {state.iteration} ({state.consumed_samples} samples "
                f"consumed{': ' + per_dataset if per_dataset else ''})")


def check_resume(loaded: LoopState, current: LoopState, *, override_blend: bool) -> None:
    """Refuse a resume that would silently change the reweighting group or the data."""
    if loaded.layout.get("dp") != current.layout["dp"]:
        raise ArgumentError(
            f"--load: the checkpoint was trained with data-parallel size {loaded.layout.get('dp')}, this run has "
            f"{current.layout['dp']}; the reweighting group (micro batch x DP) and the data order would change. "
            "Resume with the same number of processes / TP / PP"
        )
    if loaded.blend != current.blend and not override_blend:
        raise ArgumentError(
            f"--load: the data blend differs from the checkpoint's ({loaded.blend} vs {current.blend}); "
            "pass --override-data-blend to resume with the new blend anyway"
        )


def _git_commit() -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    versions = {}
    for package in ("torch", "numpy", "sentencepiece", "transformer-engine"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["megatron-core"] = installed_version()  # its package_info: a wheel or a source checkout alike
    return versions


def write_run_record(save_dir: str, config, *, start_iteration: int = 0) -> str:
    """Write ``run.json`` in ``save_dir`` atomically (each start rewrites it); returns its path."""
    parallel = config.parallel
    record = {
        "start_iteration": start_iteration,
        "config": config.as_dict(),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "layout": {"dp": parallel.data_parallel_size, "tp": parallel.tensor_model_parallel_size,
                   "pp": parallel.pipeline_model_parallel_size, "cp": parallel.context_parallel_size,
                   "world_size": parallel.world_size},
        "seed": config.training.seed,  # python/numpy/torch; pipeline stage p uses seed + 100 * p
        "reweighting": config.reweight.state_dict(),
    }
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, "run.json")
    write_json_atomically(path, record, indent=1)
    return path
