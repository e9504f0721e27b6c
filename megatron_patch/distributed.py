"""Process start-up: the process group, megatron-core's parallel groups, seeds, and a CPU group.

With CUDA the backend is NCCL and each process takes the GPU of its ``LOCAL_RANK``; without it
the backend is gloo and :func:`megatron_patch.cpu_compat.apply_cpu_shims` lets megatron-core run
on the CPU. The rendezvous is ``env://`` (torchrun or srun set ``MASTER_ADDR``, ``RANK``, ...);
started without a launcher (``python pretrain_llama.py ...``) the process is a world of one.
"""

import datetime
import gc
import os
import random

import numpy as np
import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

from .cpu_compat import apply_cpu_shims
from .launch import free_port


def initialize_distributed(parallel, *, seed: int) -> torch.device:
    """Create the process group and the TP/PP/CP/DP groups, seed every generator; returns the device.

    Args:
        parallel: the :class:`megatron_patch.config.ParallelConfig` (sizes and
            ``--distributed-timeout-minutes``, how long a collective waits for a rank).
        seed: ``--seed``.
    """
    if "RANK" not in os.environ:  # no torchrun/srun: one process, as `python pretrain_llama.py` means
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
    else:
        apply_cpu_shims()
        device, backend = torch.device("cpu"), "gloo"
    torch.distributed.init_process_group(
        backend, timeout=datetime.timedelta(minutes=parallel.distributed_timeout_minutes))
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
    )
    set_seeds(seed)
    return device


def set_seeds(seed: int) -> None:
    """Seed python, numpy and torch; megatron's tracker gives each TP rank its own stream.

    Pipeline stages are offset (as in Megatron-LM) so that different layers do not draw the same
    numbers; DP ranks share the seed, which keeps their model replicas identical at init.
    """
    seed = seed + 100 * ps.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def rng_state() -> dict:
    """Every generator's state: python, numpy, torch (CPU and CUDA) and megatron's tracker."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    state["tracker"] = tensor_parallel.get_cuda_rng_tracker().get_states()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def new_cpu_group():
    """A gloo group over all ranks (collective: every rank calls it), for host-side agreements
    such as exit flags, which must not wait for the device's queued work as an NCCL reduce would."""
    if torch.distributed.get_backend() == "gloo":
        return torch.distributed.group.WORLD
    return torch.distributed.new_group(backend="gloo")


def is_logging_rank() -> bool:
    """The last rank: a last pipeline stage, which holds the losses (Megatron-LM's convention)."""
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


def print_rank0(message: str) -> None:
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(message, flush=True)


def shutdown() -> None:
    """Wait for every rank, then tear down the groups (a clean exit for torchrun)."""
    torch.distributed.barrier()
    ps.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    skip_exit_collection()


def skip_exit_collection() -> None:
    """Leave the objects alive now out of the interpreter's garbage collections at exit.

    Python collects garbage again while it shuts down; over the millions of objects that torch and
    megatron-core create on import that takes about 1.2 s a process on a 2-core CPU, at the end of
    every run. ``gc.freeze()`` moves them out of the collector's view; the operating system frees
    the memory as the process ends. Files are closed and checkpoints written before this point.
    """
    gc.freeze()
