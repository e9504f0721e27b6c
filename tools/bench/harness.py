"""What the benchmark scripts share besides the ABBA runner: the machine line, the flags of the
two-run benchmarks, a synthetic batch and the steady-state step time of a run's log intervals."""

import argparse
import os
import platform
import statistics
from typing import List, Sequence


def machine() -> str:
    """One line naming the machine: CPU model, cores this process may use, load, torch, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    line = f"{cpu}, {cores} cores usable, load average {load}, Python {platform.python_version()}"
    try:
        import torch

        line += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            line += f", {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    return line


# The training runs of bench/overhead.py and bench/loop.py: the tiny preset on mock data, no evaluation.
TINY_MOCK_FLAGS = ["--model", "tiny", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "8192",
                   "--micro-batch-size", "2", "--eval-interval", "1000000", "--eval-iters", "1"]


def runs_parser(doc: str) -> argparse.ArgumentParser:
    """The flags of a benchmark that compares two torchrun runs: rounds, length, warm-up, processes."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="pairs of runs (default: 5)")
    p.add_argument("--train-iters", type=int, default=40)
    p.add_argument("--skip-iters", type=int, default=10, help="warm-up steps left out of the median")
    p.add_argument("--nproc", type=int, default=2, help="processes (data-parallel ranks)")
    return p


def split_extra(argv: Sequence[str]) -> tuple:
    """``(own flags, training flags)``: what comes after ``--`` goes to the benchmarked runs."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def synthetic_batch(micro_batch_size: int, seq_length: int, vocab_size: int, seed: int = 0) -> dict:
    """A GPT micro-batch of random tokens with the keys the forward steps read (CPU tensors).

    Returns:
        ``tokens``, ``labels``, ``position_ids`` [b, s] int64 and ``loss_mask`` [b, s] float (all ones).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (micro_batch_size, seq_length + 1), generator=gen)
    return {"tokens": ids[:, :-1].contiguous(), "labels": ids[:, 1:].contiguous(),
            "loss_mask": torch.ones(micro_batch_size, seq_length),
            "position_ids": torch.arange(seq_length).expand(micro_batch_size, -1).contiguous()}


def steady_ms_per_iter(records: List[dict], skip_iters: int) -> float:
    """Median ``ms_per_iter`` of the log intervals that end after the first ``skip_iters`` steps.

    ``records``: the ``train`` records of a metrics file (``megatron_patch.logging_utils.read_metrics``).
    """
    steady = [r["ms_per_iter"] for r in records if r["iteration"] > skip_iters]
    if not steady:
        raise ValueError(f"no log interval after iteration {skip_iters}; run more --train-iters")
    return statistics.median(steady)
