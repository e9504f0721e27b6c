"""The CPU demo: uniform vs LinUpper on a small real-text corpus, with a report.

    make demo                  # ~8 minutes on 2 idle cores (15 at most)
    make demo ARGS=--quick     # ~2 minutes: committed fixture text, a few iterations
    make demo ARGS="--seeds 3" # each run with seeds 1234, 1235, 1236: means and spreads (~3x as long)

Builds (or reuses) the offline corpus with a redundant domain (near and exact duplicates),
trains a tiny Llama twice from the same seed and data order (``uniform``, then ``linupper``
after a uniform warm-up), each with 2 gloo processes through ``pretrain_llama.py`` so the real
all-gather runs, and writes ``reports/demo/``: plots, ``summary.md`` and ``summary.json``
(tools/demo/report.py, whose loss and perplexity plots and several-seed statistics are
tools/compare_runs.py's).
"""

if not __package__:  # run as a file: the repository root, not tools/demo/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
import warnings

from megatron_patch.launch import ROOT, launch_env, torchrun_command
from tools.bench.harness import machine

STRATEGIES = ("uniform", "linupper")

# Recipe (ours, the paper's scaled down): tiny Llama, seq 256, group of 16 samples (micro batch 8
# x DP 2), uniform warm-up for the first fifth of training, then LinUpper at r = 1; validation
# every quarter. 250 iterations: the whole demo took 7m48s on 2 idle cores (0.7-0.9 s an iteration,
# corpus built from scratch; docs/demo.md), well inside the 15-minute target on slower laptops.
FULL = dict(iters=250, micro=8, seq=256, log=10, eval_iters=4, max_bytes=2_000_000, r=1.0)
QUICK = dict(iters=24, micro=4, seq=64, log=2, eval_iters=2, max_bytes=None, r=1.0)

# The loop's console lines (megatron_patch/logging_utils.py), summarised as progress lines.
ITERATION_LINE = re.compile(r"^ iteration\s+(\d+)/\s*\d+ .*\| lm loss: (\S+) ")
VALIDATION_LINE = re.compile(r"^ validation at iteration\s+(\d+) \| loss: (\S+) \| ppl: (\S+) ")


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def prepare(out: str, quick: bool) -> dict:
    """The corpus, tokenizer and indexed datasets (cached in ``out``); returns the manifest."""
    from tools.build_corpus import CorpusConfig
    from tools.prepare_data import build_fixture_dataset, prepare_data

    if quick:
        return build_fixture_dataset(out, with_redundant=True)
    config = CorpusConfig(out_dir=os.path.join(out, "jsonl"), max_bytes_per_domain=FULL["max_bytes"],
                          with_redundant=True)
    return prepare_data(config, out, workers=2)


def training_command(strategy: str, manifest: dict, recipe: dict, metrics: str, seed: int) -> list:
    """``torchrun --nproc_per_node 2 pretrain_llama.py ...`` for one run of the recipe (on a free port)."""
    return torchrun_command(training_target(strategy, manifest, recipe, metrics, seed), nproc=2)


def training_target(strategy: str, manifest: dict, recipe: dict, metrics: str, seed: int) -> list:
    """``pretrain_llama.py`` and its flags for one run of the recipe (what torchrun starts on each process)."""
    return [
        os.path.join(ROOT, "pretrain_llama.py"), "--model", "tiny",
        "--seq-length", str(recipe["seq"]), "--max-position-embeddings", str(recipe["seq"]),
        "--data-path", *manifest["train_data_path"].split(),
        "--valid-data-path", *manifest["valid_data_path"].split(),
        "--tokenizer-model", manifest["tokenizer_model"],
        "--micro-batch-size", str(recipe["micro"]), "--global-batch-size", str(2 * recipe["micro"]),
        "--train-iters", str(recipe["iters"]), "--lr", "1e-3", "--min-lr", "1e-4",
        "--lr-warmup-iters", str(max(1, recipe["iters"] // 20)), "--weight-decay", "0.1",
        "--log-interval", str(recipe["log"]), "--eval-interval", str(recipe["eval"]),
        "--eval-iters", str(recipe["eval_iters"]), "--seed", str(seed),
        "--reweight-strategy", strategy, "--reweight-r", str(recipe["r"]),
        "--reweight-warmup-iters", str(recipe["warmup"]), "--metrics-file", metrics]


class Progress:
    """Progress lines with an ETA for the whole demo (all runs).

    The pace is measured between iteration lines, so the start-up of a run (imports, dataset
    indices: long against a short run) does not inflate it; the start-up measured in this run is
    added once for each run still to come.
    """

    def __init__(self, iters_per_run: int, runs: int):
        self.iters, self.runs = iters_per_run, runs
        self.start_run(0)

    def start_run(self, index: int) -> None:
        self.run_index, self.run_start, self.first = index, time.time(), None

    def line(self, strategy: str, console: str) -> None:
        """Summarise one console line of the run (others are kept only for error messages)."""
        match = ITERATION_LINE.match(console)
        if match:
            it, now = int(match.group(1)), time.time()
            self.first = self.first or (it, now)
            eta = ""
            if it > self.first[0]:
                pace = (now - self.first[1]) / (it - self.first[0])
                startup = max(0.0, self.first[1] - self.run_start - pace * self.first[0])
                later_runs = self.runs - self.run_index - 1
                left = pace * (self.iters - it) + later_runs * (startup + pace * self.iters)
                eta = f", {pace:.2f} s/iteration, ETA {_minutes(left)}"
            log(f"{strategy}: iteration {it}/{self.iters}, lm loss {float(match.group(2)):.4f}{eta}")
            return
        match = VALIDATION_LINE.match(console)
        if match:
            log(f"{strategy}: validation at iteration {match.group(1)}: mean loss {float(match.group(2)):.4f}, "
                f"perplexity {float(match.group(3)):.2f}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def train(strategy: str, command: list, progress: Progress) -> float:
    """Run one 2-process training; return its wall time. On failure, exit with the log's tail."""
    start = time.time()  # launch_env: one thread per process (two processes on two cores) unless set
    proc = subprocess.Popen(command, cwd=ROOT, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        progress.line(strategy, line)
    if proc.wait() != 0:
        raise SystemExit(f"[demo] the {strategy} run failed (exit {proc.returncode}):\n{''.join(tail)}")
    return time.time() - start


def main(argv=None) -> None:
    # megatron-core warns at import that Transformer Engine and apex are absent: expected on a CPU.
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|apex).*")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fixture text, a few iterations (~2 minutes)")
    parser.add_argument("--out", default=os.path.join(ROOT, "reports", "demo"), help="report directory")
    parser.add_argument("--data", default=None,
                        help="corpus directory (default data/corpus_demo, or data/fixture with --quick)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--seeds", type=int, default=1,
                        help="train each run with this many seeds (--seed, --seed + 1, ...); the report gives means "
                             "and spreads (default 1)")
    parser.add_argument("--iters", type=int, default=None, help="training iterations per run (default 250; 24 with --quick)")
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)  # the runs start in the repository root, the report reads from here
    recipe = dict(QUICK if args.quick else FULL)
    if args.iters:
        recipe["iters"] = args.iters
    # Validation 4 times, the last at the final iteration (ceil: no extra pass just before the end).
    recipe.update(warmup=recipe["iters"] // 5, eval=max(1, -(-recipe["iters"] // 4)))
    # Its own directory: data/corpus holds prepare_data's default settings, which differ from these.
    data_dir = args.data or os.path.join(ROOT, "data", "fixture" if args.quick else "corpus_demo")
    started = time.time()
    log(f"preparing data in {data_dir} (built once, then reused)")
    manifest = prepare(data_dir, args.quick)
    log(f"{manifest['tokens']['train']:,} training tokens in {len(manifest['domains'])} domains; "
        f"each run reads {recipe['iters'] * 2 * recipe['micro'] * recipe['seq']:,}")

    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: must be at least 1")
    seeds = [args.seed + i for i in range(args.seeds)]
    runs = [(seed, strategy) for seed in seeds for strategy in STRATEGIES]
    progress = Progress(recipe["iters"], len(runs))
    metrics_files, wall = {strategy: [] for strategy in STRATEGIES}, {}
    for index, (seed, strategy) in enumerate(runs):
        name = strategy if len(seeds) == 1 else f"{strategy} seed {seed}"
        metrics = os.path.join(args.out, strategy, *([] if len(seeds) == 1 else [f"seed_{seed}"]), "metrics.jsonl")
        os.makedirs(os.path.dirname(metrics), exist_ok=True)
        if os.path.exists(metrics):
            os.remove(metrics)  # the loop appends; a previous demo's records would mix in
        log(f"training {name} ({recipe['iters']} iterations, 2 processes)")
        progress.start_run(index)
        wall[name] = train(name, training_command(strategy, manifest, recipe, metrics, seed), progress)
        metrics_files[strategy].append(metrics)

    from tools.demo.report import write_report

    context = {"recipe": recipe, "seed": args.seed, "seeds": seeds, "wall_s": {k: round(v, 1) for k, v in wall.items()},
               "machine": machine(), "date": datetime.date.today().isoformat(),
               "command": "python -m tools.demo.run " + " ".join(sys.argv[1:] if argv is None else argv)}
    summary = write_report(metrics_files, manifest, args.out, context)
    for name, stats in summary["comparison"]["labels"].items():
        spread = f" ± {stats['final_valid_loss']['std']:.4f} over {len(seeds)} seeds" if len(seeds) > 1 else ""
        log(f"final mean validation loss, {name}: {stats['final_valid_loss']['mean']:.4f}{spread}")
    log(f"done in {_minutes(time.time() - started)}; report: {os.path.join(args.out, 'summary.md')}")


if __name__ == "__main__":
    main()
