"""Reweighting overhead: step time of ``pretrain_llama.py`` with a reweighting strategy vs ``uniform``.

    python tools/bench/overhead.py --rounds 5 --train-iters 40

Each round runs the entry point twice under torchrun (2 gloo processes, the ``tiny`` preset on
mock data), once with ``--reweight-strategy linupper`` and once with ``uniform``, in ABBA order.
A run's step time is the median ``ms_per_iter`` of its metrics file after ``--skip-iters``
warm-up steps (so start-up and the first slow steps do not count); the figure is the median over
rounds of the per-round ratio. Target: <= 1.01. Flags after ``--`` go to the entry point.
"""

if not __package__:  # run as a file: the repository root, not tools/bench/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import argparse
import sys
import tempfile

from megatron_patch.launch import run_torchrun
from megatron_patch.logging_utils import read_metrics
from tools.bench.abba import interleave, report_ratio
from tools.bench.harness import TINY_MOCK_FLAGS, machine, runs_parser, split_extra, steady_ms_per_iter

TARGET = 1.01
BASE_FLAGS = [*TINY_MOCK_FLAGS, "--log-interval", "1"]


def run_entry_point(label: str, variant_flags: list[str], args: argparse.Namespace, extra: list[str]) -> float:
    """One ``pretrain_llama.py`` run with ``variant_flags``; returns its steady-state ms per step."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = f"{tmp}/metrics.jsonl"
        flags = [*BASE_FLAGS, "--train-iters", str(args.train_iters), "--metrics-file", metrics, *variant_flags, *extra]
        run_torchrun(["pretrain_llama.py", *flags], nproc=args.nproc)
        ms = steady_ms_per_iter(read_metrics(metrics, "train"), args.skip_iters)
    print(f"  {label:>12}: {ms:8.1f} ms/step", flush=True)
    return ms


def parse_args(argv):
    p = runs_parser(__doc__)
    p.add_argument("--strategy", default="linupper", help="the reweighting strategy to compare with uniform")
    p.add_argument("--r", type=float, default=1.0, help="its temperature")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, extra = split_extra(argv)
    args = parse_args(own)
    print(f"machine: {machine()}")
    variants = {s: ["--reweight-strategy", s, "--reweight-r", str(args.r)] for s in (args.strategy, "uniform")}
    results = interleave(list(variants), args.rounds, lambda s: run_entry_point(s, variants[s], args, extra))
    return report_ratio(results, args.strategy, "uniform", what="reweighting overhead", unit="ms/step",
                        target=TARGET, at_most=True)


if __name__ == "__main__":
    main()
