"""Run a test function in N real processes with a process group and megatron's parallel state.

Usage (the ``run_distributed`` fixture of ``tests/conftest.py`` hands out :func:`run_distributed`;
``from tests.helpers.distributed import rank_device`` in the function's module)::

    def check(dp_size):            # runs in every rank, after initialize_model_parallel
        ...
        return some_tensor          # picklable; collected per rank

    results = run_distributed(check, world_size=4, tp=2, pp=1, dp_size=2)

Backend and device follow the machine: gloo with the CPU shims of ``megatron_patch.cpu_compat``
when CUDA is absent (processes are forked, so megatron-core is imported once), NCCL with one GPU
per rank otherwise (processes are spawned: the function must be defined at module level). A
failure in any rank raises in the caller with that rank's traceback; the other ranks are killed
rather than left hanging in a collective.
"""

import contextlib
import datetime
import os
import queue as queue_lib
import signal
import traceback

import pytest
import torch
import torch.multiprocessing as mp
from multiprocessing.reduction import ForkingPickler

from megatron_patch.launch import free_port


def rank_device() -> torch.device:
    """The device a rank computes on: its GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _worker(rank, world_size, port, tp, pp, cp, fn, kwargs, results):
    from megatron.core import parallel_state

    # Own process group, so the parent can kill this rank together with any helper processes
    # it started (dist_checkpointing's writers) if the test fails.
    os.setpgrp()
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        # Two cores are shared by all ranks: one thread each avoids oversubscription stalls.
        torch.set_num_threads(1)
        if torch.cuda.is_available():
            torch.cuda.set_device(rank % torch.cuda.device_count())
            backend = "nccl"
        else:
            from megatron_patch.cpu_compat import apply_cpu_shims

            apply_cpu_shims()
            backend = "gloo"
        torch.distributed.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=120)
        )
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp
        )
        value = fn(**kwargs)
        ForkingPickler.dumps(value)  # an unpicklable result fails here, with a traceback
        results.put((rank, True, value))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent, with its traceback
        results.put((rank, False, traceback.format_exc()))
    finally:
        if torch.distributed.is_initialized():
            parallel_state.destroy_model_parallel()
            torch.distributed.destroy_process_group()


def _died(procs, reported) -> dict:
    """``{rank: message}`` of the ranks that exited without reporting a result or an error."""
    return {r: f"exited with code {p.exitcode} without a result" for r, p in enumerate(procs)
            if p.exitcode is not None and r not in reported}


def run_distributed(fn, world_size: int, *, tp: int = 1, pp: int = 1, cp: int = 1, timeout: float = 180,
                    **kwargs) -> list:
    """Run ``fn(**kwargs)`` in ``world_size`` ranks with TP=``tp``, PP=``pp``, CP=``cp`` (DP is the rest).

    Returns the list of ``fn``'s return values, indexed by global rank. Skips the test on a CUDA
    machine with fewer GPUs than ranks. Raises ``RuntimeError`` with the failing ranks' tracebacks
    (and the exit codes of ranks that died without one) if any rank raises, dies or exceeds
    ``timeout`` seconds.
    """
    if torch.cuda.is_available() and torch.cuda.device_count() < world_size:
        pytest.skip(f"needs {world_size} GPUs for NCCL, found {torch.cuda.device_count()}")
    ctx = mp.get_context("spawn" if torch.cuda.is_available() else "fork")
    # Not daemonic: dist_checkpointing starts helper processes of its own; stragglers are killed below.
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, world_size, port, tp, pp, cp, fn, kwargs, results))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    outputs, errors = {}, {}
    try:
        while len(outputs) + len(errors) < world_size:
            try:
                # Short polls so a rank that died without reporting is noticed.
                rank, ok, value = results.get(timeout=1.0)
            except queue_lib.Empty:
                if results.empty():
                    errors.update(_died(procs, {**outputs, **errors}))
                timeout -= 1.0
                if timeout <= 0:
                    errors[-1] = "timed out"
                if errors:
                    break
                continue
            (outputs if ok else errors)[rank] = value
            if errors:
                break
    finally:
        for proc in procs:
            proc.join(timeout=5 if not errors else 0.5)
        if errors:
            # A rank that died without a word is often why the others failed (a peer reset in a
            # collective): name it beside them (not one that exited 0 with its result still queued).
            errors.update({r: msg for r, msg in _died(procs, {**outputs, **errors}).items() if procs[r].exitcode})
        for proc in procs:
            if proc.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.join()
    if errors:
        detail = "\n".join(f"--- rank {r} ---\n{msg}" for r, msg in sorted(errors.items()))
        raise RuntimeError(f"distributed test failed in {len(errors)} rank(s):\n{detail}")
    return [outputs[rank] for rank in range(world_size)]
