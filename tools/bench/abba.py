"""Shared pieces of the benchmark scripts: the machine line, interleaved runs, medians, torchrun.

The benchmarks run on shared, noisy machines, so every comparison is a ratio of two variants
measured in the same invocation: the variants alternate in ABBA order (A B, B A, A B, ...), so a
slow drift of the machine's load hits both alike, and the reported figure is the median of the
per-round ratios.
"""

import json
import os
import pathlib
import platform
import socket
import statistics
import subprocess
import sys
from typing import Callable, Dict, List, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]


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


def interleave(variants: Sequence[str], rounds: int, run: Callable[[str], float]) -> Dict[str, List[float]]:
    """Call ``run(variant)`` for every variant in each of ``rounds`` rounds, in ABBA order.

    Returns:
        ``{variant: [one result per round]}``.
    """
    results = {v: [] for v in variants}
    for i in range(rounds):
        for variant in (variants if i % 2 == 0 else list(reversed(variants))):
            results[variant].append(run(variant))
    return results


def round_ratios(results: Dict[str, List[float]], numerator: str, denominator: str) -> List[float]:
    """The ratio ``numerator / denominator`` of each round."""
    return [a / b for a, b in zip(results[numerator], results[denominator])]


def split_extra(argv: Sequence[str]) -> tuple:
    """``(own flags, training flags)``: what comes after ``--`` goes to the benchmarked runs."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def report_ratio(results: Dict[str, List[float]], numerator: str, denominator: str, *, what: str, unit: str,
                 target: float, at_most: bool) -> float:
    """Print both variants' spreads and the median round ratio against its target; returns that median."""
    ratios = round_ratios(results, numerator, denominator)
    ratio = statistics.median(ratios)
    met = ratio <= target if at_most else ratio >= target
    print(f"{unit} {numerator}: {spread(results[numerator])}, {denominator}: {spread(results[denominator])}")
    print(f"{what} ({numerator} / {denominator} {unit}, median [min, max] of {len(ratios)} rounds): "
          f"{spread(ratios)}; target {'<=' if at_most else '>='} {target}: {'met' if met else 'NOT met'}")
    return ratio


def spread(values: Sequence[float]) -> str:
    """``median [min, max]`` with 4 significant digits."""
    return f"{statistics.median(values):.4g} [{min(values):.4g}, {max(values):.4g}]"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(target: Sequence[str], nproc: int, timeout: float = 900) -> str:
    """Run ``target`` (a script and its flags, or ``-m module ...``) under torchrun on this machine.

    One intra-op thread per process, as torchrun's default, so ``nproc`` processes use
    ``nproc`` cores. Returns stdout; raises with the output's tail when a rank fails.
    """
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(free_port()), *target]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def train_records(metrics_file: str) -> List[dict]:
    """The ``"kind": "train"`` records of a metrics file (docs/architecture.md)."""
    with open(metrics_file) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [r for r in records if r["kind"] == "train"]


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
    """Median ``ms_per_iter`` of the log intervals that end after the first ``skip_iters`` steps."""
    steady = [r["ms_per_iter"] for r in records if r["iteration"] > skip_iters]
    if not steady:
        raise ValueError(f"no log interval after iteration {skip_iters}; run more --train-iters")
    return statistics.median(steady)
