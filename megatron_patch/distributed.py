"""Process start-up: the process group, megatron-core's parallel groups, seeds, and a CPU group.

With CUDA the backend is NCCL and each process takes the GPU of its ``LOCAL_RANK``; without it
the backend is gloo and :func:`megatron_patch.cpu_compat.apply_cpu_shims` lets megatron-core run
on the CPU. The rendezvous is ``env://`` (torchrun or srun set ``MASTER_ADDR``, ``RANK``, ...).
"""

import datetime
import os
import random

import numpy as np
import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

from .cpu_compat import apply_cpu_shims


def initialize_distributed(*, tensor_model_parallel_size: int, pipeline_model_parallel_size: int,
                           context_parallel_size: int, seed: int, timeout_minutes: float = 10) -> torch.device:
    """Create the process group and the TP/PP/CP/DP groups, seed every generator; returns the device.

    ``timeout_minutes`` bounds how long a collective waits for a rank (``--distributed-timeout-minutes``).
    """
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device, backend = torch.device("cuda", torch.cuda.current_device()), "nccl"
    else:
        apply_cpu_shims()
        device, backend = torch.device("cpu"), "gloo"
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
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
