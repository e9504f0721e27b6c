"""The run record (what a run was, to compare or reproduce it) and the resume guards.

``run.json`` next to the checkpoints holds every resolved argument, package versions, the
project's git commit when available, the world layout and the seed. On ``--load``, a checkpoint
whose data-parallel size or data blend differs from this run's is refused: a different DP size
changes the reweighting group (micro batch x DP samples) and the data order, a different blend
silently repeats or skips data (Megatron-LM issue 457). ``--override-data-blend`` accepts a new
blend knowingly; the consumed samples are then counted against the new blend.
"""

import importlib.metadata
import json
import os
import subprocess

from .arguments import ArgumentError


def _git_commit() -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict:
    versions = {}
    for package in ("torch", "megatron-core", "numpy", "sentencepiece", "transformer-engine"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_run_record(save_dir: str, args, reweight, *, start_iteration: int = 0) -> str:
    """Write ``run.json`` in ``save_dir`` atomically (each start rewrites it); returns its path."""
    record = {
        "start_iteration": start_iteration,
        "args": {k: v for k, v in sorted(vars(args).items())},
        "versions": _versions(),
        "git_commit": _git_commit(),
        "layout": {"dp": args.data_parallel_size, "tp": args.tensor_model_parallel_size,
                   "pp": args.pipeline_model_parallel_size, "cp": args.context_parallel_size,
                   "world_size": int(os.environ.get("WORLD_SIZE", 1))},
        "seed": args.seed,  # python/numpy/torch; pipeline stage p uses seed + 100 * p
        "reweighting": {"strategy": reweight.strategy, "delta": reweight.delta, **reweight.schedule.state_dict()},
    }
    os.makedirs(save_dir, exist_ok=True)
    path = os.path.join(save_dir, "run.json")
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, path)
    return path


def check_resume(loaded, current, *, override_blend: bool) -> None:
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
