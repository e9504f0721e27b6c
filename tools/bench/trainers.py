"""The two loops: tokens/s of ``--trainer megatron-core`` (ours) vs ``--trainer megatron-lm``, same flags.

    python tools/bench/trainers.py --rounds 5 --train-iters 60

Each round runs ``pretrain_llama.py`` twice under torchrun (2 gloo processes, the ``tiny`` preset on
mock data, linupper after no warm-up), once per trainer, in ABBA order. The two loops time their
steps differently (ours leaves logging out, Megatron-LM's interval time keeps it in), so both are
timed the same way from outside: the wall time between the arrival of the iteration lines
``--skip-iters`` and ``--train-iters`` on the unbuffered output, divided by the steps between
them. The figure is the median over rounds of ``tokens/s ours / tokens/s Megatron-LM``. Target:
>= 0.97. Needs megatron-core >= 0.17 (``megatron.training``). Flags after ``--`` go to both runs.
"""

if not __package__:  # run as a file: the repository root, not tools/bench/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import re
import subprocess
import sys
import time

from megatron_patch.launch import ROOT, kill_tree, launch_env, torchrun_command
from tools.bench.abba import interleave, report_ratio
from tools.bench.harness import TINY_MOCK_FLAGS, machine, runs_parser, split_extra

TARGET = 0.97
TRAINERS = ("megatron-core", "megatron-lm")
BASE_FLAGS = [*TINY_MOCK_FLAGS, "--global-batch-size", "4", "--log-interval", "1", "--eval-iters", "0",
              "--reweight-strategy", "linupper", "--reweight-r", "1.0"]
ITERATION_LINE = re.compile(r"iteration +(\d+)/")


def steady_ms_per_iter(flags: list[str], skip_iters: int, train_iters: int, nproc: int, timeout: float = 1800) -> float:
    """One run; the wall milliseconds per step between the lines of iterations ``skip_iters`` and ``train_iters``."""
    arrived = {}
    with subprocess.Popen(torchrun_command(["pretrain_llama.py", *flags], nproc), cwd=ROOT,
                          env=launch_env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        deadline, tail = time.monotonic() + timeout, []
        for line in proc.stdout:
            tail = [*tail[-40:], line]
            match = ITERATION_LINE.search(line)
            if match:
                arrived.setdefault(int(match.group(1)), time.monotonic())
            if time.monotonic() > deadline:
                kill_tree(proc.pid)
                raise TimeoutError(f"pretrain_llama.py timed out after {timeout} s:\n{''.join(tail)}")
        if proc.wait() != 0 or train_iters not in arrived or skip_iters not in arrived:
            raise RuntimeError(f"pretrain_llama.py failed ({proc.returncode}):\n{''.join(tail)}")
    return 1000 * (arrived[train_iters] - arrived[skip_iters]) / (train_iters - skip_iters)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, extra = split_extra(argv)
    args = runs_parser(__doc__).parse_args(own)
    print(f"machine: {machine()}")

    def run(trainer):
        flags = [*BASE_FLAGS, "--train-iters", str(args.train_iters), "--trainer", trainer, *extra]
        ms = steady_ms_per_iter(flags, args.skip_iters, args.train_iters, args.nproc)
        print(f"  {trainer:>13}: {ms:8.1f} ms/step", flush=True)
        return 1000.0 / ms  # steps/s: the same tokens per step in both

    results = interleave(list(TRAINERS), args.rounds, run)
    return report_ratio(results, "megatron-core", "megatron-lm", what="loop efficiency", unit="steps/s",
                        target=TARGET, at_most=False)


if __name__ == "__main__":
    main()
