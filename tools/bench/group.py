"""Cost of ``--reweight-group global-batch``: step time against ``micro-batch``, same model and data.

    python tools/bench/group.py --rounds 5 --train-iters 30

Each round runs ``pretrain_llama.py`` twice under torchrun (2 gloo processes, the ``tiny``
preset on mock data, ``linupper``, micro batch 2 and global batch 16: 4 micro-batches per rank),
once per group mode, in ABBA order; the figure is the median over rounds of the per-round ratio
of steady-state step times. ``global-batch`` adds a forward-only pass over the step's
micro-batches, so the ratio is expected near 1 + forward / (forward + backward), about 1.33
when the backward costs twice the forward. Flags after ``--`` go to the entry point.
"""

if not __package__:  # run as a file: the repository root, not tools/bench/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import sys

from tools.bench.abba import interleave, report_ratio
from tools.bench.harness import machine, runs_parser, split_extra
from tools.bench.overhead import run_entry_point

STEP = ["--reweight-strategy", "linupper", "--reweight-r", "1.0", "--global-batch-size", "16"]
EXPECTED = 4 / 3  # 1 + forward / (forward + backward) with a backward of two forwards
TARGET = 1.4  # the first pass may cost a little more than one forward, not much more


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, extra = split_extra(argv)
    args = runs_parser(__doc__).parse_args(own)
    print(f"machine: {machine()}")
    variants = {mode: [*STEP, "--reweight-group", mode] for mode in ("global-batch", "micro-batch")}
    results = interleave(list(variants), args.rounds, lambda m: run_entry_point(m, variants[m], args, extra))
    print(f"expected near {EXPECTED:.3f} (1 + forward / (forward + backward), backward = 2 forwards)")
    return report_ratio(results, "global-batch", "micro-batch", what="global-batch cost", unit="ms/step",
                        target=TARGET, at_most=True)


if __name__ == "__main__":
    main()
