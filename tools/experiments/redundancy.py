"""The paper's mechanism, controlled: does LinUpper's advantage grow with the share of repeated data?

    python tools/experiments/redundancy.py            # the full grid: 27 runs (20.5 minutes on an idle 2-core VM)
    python tools/experiments/redundancy.py --quick    # committed fixture text, 2 short runs (the suite runs it)

The training stream mixes the demo corpus's ordinary domains (natural mixture) with a **redundant
stream**: exact repeats of a few training documents, one indexed dataset of its own, whose blend
weight is its share of the training tokens (``--shares``, percent). Validation is on the held-out
documents of the ordinary domains only. For each share, ``uniform`` and ``linupper`` (each r of
``--r``, after a uniform warm-up over the first fifth) train the demo's tiny Llama with 2 gloo
processes through ``pretrain_llama.py``, with every seed of ``--seeds``; the runs of one share and
seed read the same batches in the same order. The report (tools/experiments/redundancy_report.py, numbers from
tools/compare_runs.py) goes to ``--out``. The grid, metric and verdict rules are fixed in
docs/redundancy.md.
"""

if not __package__:  # run as a file: the repository root, not tools/experiments/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import datetime
import json
import os
import sys
import time
import warnings

from megatron_patch.errors import ArgumentError
from megatron_patch.launch import ROOT, run_torchrun
from tools.bench.harness import machine
from tools.build_corpus import REDUNDANT
from tools.cli import ToolParser, run_tool
from tools.data.corpus_documents import hash_order, read_jsonl, size, write_jsonl
from tools.demo.run import prepare, training_target

# The grid and recipe of docs/redundancy.md, fixed there before the first full run: the demo's tiny
# Llama and optimiser, sequence 128, micro batch 8 x DP 2 (a reweighting group of 16), 100
# iterations (estimated at a minute a run on 2 idle cores, start-up included; 128-487 s measured
# on a busy VM, docs/redundancy.md), validation 4 times on 2 batches per domain. --quick (CI-sized: two
# runs, start-up dominates): the share 50 %, r = 1, one seed, 10 iterations of 4 x 64.
FULL = dict(shares=(0, 25, 50), rs=(0.5, 1.0), seeds=(1234, 1235, 1236),
            iters=100, micro=8, seq=128, log=5, eval_iters=2, evals=4)
QUICK = dict(shares=(50,), rs=(1.0,), seeds=(1234,), iters=10, micro=4, seq=64, log=2, eval_iters=1, evals=2)
# The redundant stream: from each ordinary domain, the first training document (in the corpus's
# hash order) of this many bytes; domains without one (whole plays, whole speeches) give none.
REPEATED_BYTES = (1_000, 6_000)
RUN_TIMEOUT_S = 900


def log(message: str) -> None:
    print(f"[redundancy] {message}", flush=True)


def repeated_documents(manifest_dir: str) -> list:
    """The few training documents the redundant stream repeats (see ``REPEATED_BYTES``)."""
    with open(os.path.join(manifest_dir, "jsonl", "corpus.json"), encoding="utf-8") as handle:
        corpus = json.load(handle)
    chosen = []
    for name, domain in sorted(corpus["domains"].items()):
        if name != REDUNDANT:
            documents = hash_order(read_jsonl(domain["splits"]["train"]["path"]), corpus["settings"]["seed"])
            chosen += [d for d in documents if REPEATED_BYTES[0] <= size(d) <= REPEATED_BYTES[1]][:1]
    return chosen


def build_redundant_stream(data_dir: str, manifest: dict) -> dict:
    """Tokenise the repeated documents into ``{data_dir}/redundancy/redundant_train_text_document``.

    Each document is written once: the blend weight, not the file, sets how often they recur
    (megatron-core reads a small dataset epoch after epoch). Returns the prefix, ids and tokens.
    """
    from tools.preprocess_data import preprocess_jsonl

    documents = repeated_documents(data_dir)
    if not documents:
        raise ArgumentError(f"--data {data_dir}: no training document of {REPEATED_BYTES[0]}-{REPEATED_BYTES[1]} "
                            "bytes to repeat")
    folder = os.path.join(data_dir, "redundancy")
    write_jsonl(os.path.join(folder, "repeated.jsonl"), documents)
    result = preprocess_jsonl(os.path.join(folder, "repeated.jsonl"), os.path.join(folder, f"{REDUNDANT}_train"),
                              manifest["tokenizer_model"], append_eod=True, log_interval=0)
    return {"prefix": result.prefixes["text"], "documents": [d.id for d in documents], "tokens": result.tokens["text"]}


def ordinary_blend(manifest: dict) -> list:
    """``[(weight, prefix)]`` of the ordinary domains, their natural mixture (weights summing to 1)."""
    demo_redundant = manifest["domains"].get(REDUNDANT)  # the demo's own redundant domain: not used here
    skip = demo_redundant["splits"]["train"]["prefix"] if demo_redundant else None
    tokens = manifest["train_data_path"].split()
    pairs = [(float(w), p) for w, p in zip(tokens[::2], tokens[1::2]) if p != skip]
    total = sum(w for w, _ in pairs)
    return [(w / total, p) for w, p in pairs]


def blend_for_share(ordinary: list, redundant_prefix: str, share: float) -> str:
    """The ``--data-path`` blend with the redundant stream at ``share`` of the tokens (0 <= share < 1).

    Every sample is one full sequence, so a prefix's sampling weight is its share of the tokens.
    """
    pairs = [(w * (1 - share), p) for w, p in ordinary] + ([(share, redundant_prefix)] if share else [])
    return " ".join(f"{w:.6f} {p}" for w, p in pairs)


def grid_runs(grid: dict) -> list:
    """Every run of the grid: ``{"share", "label", "strategy", "r", "seed"}``, strategies interleaved per seed."""
    strategies = [("uniform", "uniform", 1.0)] + [(f"linupper r={r:g}", "linupper", r) for r in grid["rs"]]
    return [{"share": share, "label": label, "strategy": strategy, "r": r, "seed": seed}
            for share in grid["shares"] for seed in grid["seeds"] for label, strategy, r in strategies]


def metrics_path(out: str, run: dict) -> str:
    label = run["label"].replace(" r=", "_r")
    return os.path.join(out, f"share_{run['share']:g}", label, f"seed_{run['seed']}", "metrics.jsonl")


def train(run: dict, manifest: dict, recipe: dict, metrics: str) -> float:
    """One 2-process run; its wall time. A failed run stops the experiment with its output's tail."""
    os.makedirs(os.path.dirname(metrics), exist_ok=True)
    if os.path.exists(metrics):
        os.remove(metrics)  # the loop appends; an earlier experiment's records would mix in
    start = time.time()
    try:
        run_torchrun(training_target(run["strategy"], manifest, dict(recipe, r=run["r"]), metrics, run["seed"]), 2,
                     timeout=RUN_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as err:
        raise SystemExit(f"[redundancy] share {run['share']:g}%, {run['label']}, seed {run['seed']}: {err}") from None
    return time.time() - start


def _check_grid(grid: dict) -> None:
    for share in grid["shares"]:
        if not 0 <= share < 100:
            raise ArgumentError(f"--shares {share:g}: a share is a percentage of the training tokens, at least 0 "
                                "and below 100")
    for flag, values in (("--shares", grid["shares"]), ("--r", grid["rs"]), ("--seeds", grid["seeds"])):
        if len(set(values)) != len(values):
            raise ArgumentError(f"{flag} {' '.join(f'{v:g}' for v in values)}: a value is repeated")
    for r in grid["rs"]:
        if not r > 0:
            raise ArgumentError(f"--r {r:g}: the temperature must be above 0")
    if grid["iters"] < 5:
        raise ArgumentError(f"--iters {grid['iters']}: at least 5 (a fifth is the uniform warm-up)")


def _main(argv: list) -> None:
    parser = ToolParser(prog="redundancy.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fixture text, a tiny grid and few iterations")
    parser.add_argument("--out", default=os.path.join(ROOT, "reports", "redundancy"), help="report directory")
    parser.add_argument("--data", help="corpus directory (default: the demo's, data/corpus_demo or data/fixture)")
    parser.add_argument("--shares", type=float, nargs="+", help="redundant share of the training tokens, percent "
                        f"(default {' '.join(map(str, FULL['shares']))})")
    parser.add_argument("--r", type=float, nargs="+", help=f"LinUpper temperatures (default {' '.join(map(str, FULL['rs']))})")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"seeds (default {' '.join(map(str, FULL['seeds']))})")
    parser.add_argument("--iters", type=int, help=f"training iterations per run (default {FULL['iters']})")
    args = parser.parse_args(argv)
    grid = dict(QUICK if args.quick else FULL)
    for key, value in (("shares", args.shares), ("rs", args.r), ("seeds", args.seeds), ("iters", args.iters)):
        if value is not None:
            grid[key] = tuple(value) if isinstance(value, list) else value
    _check_grid(grid)
    out = os.path.abspath(args.out)  # the runs write their metrics files from the repository root
    if os.path.exists(out) and not os.path.isdir(out):
        raise ArgumentError(f"--out {args.out}: exists and is not a directory")
    # Warm-up over the first fifth (the demo's); validation `evals` times, the last at the end.
    recipe = dict(grid, warmup=grid["iters"] // 5, eval=-(-grid["iters"] // grid["evals"]))
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|apex).*")
    started = time.time()
    data_dir = os.path.abspath(args.data or os.path.join(ROOT, "data", "fixture" if args.quick else "corpus_demo"))
    log(f"preparing data in {data_dir} (the demo's corpus, built once, then reused)")
    manifest = prepare(data_dir, args.quick)
    stream = build_redundant_stream(data_dir, manifest)
    log(f"redundant stream: {len(stream['documents'])} documents, {stream['tokens']:,} tokens "
        f"({', '.join(stream['documents'])})")
    ordinary = ordinary_blend(manifest)
    runs = grid_runs(grid)
    for index, run in enumerate(runs):
        run_manifest = dict(manifest, train_data_path=blend_for_share(ordinary, stream["prefix"], run["share"] / 100))
        run["metrics"] = metrics_path(out, run)
        run["wall_s"] = round(train(run, run_manifest, recipe, run["metrics"]), 1)
        done = sum(r["wall_s"] for r in runs[:index + 1])
        left = done / (index + 1) * (len(runs) - index - 1)
        log(f"run {index + 1}/{len(runs)}: share {run['share']:g}%, {run['label']}, seed {run['seed']}: "
            f"{run['wall_s']:.0f} s; about {left / 60:.0f} min left")

    from tools.experiments.redundancy_report import write_report

    context = {"grid": {k: list(v) if isinstance(v, tuple) else v for k, v in recipe.items()},
               "redundant_stream": stream, "ordinary_blend": ordinary, "machine": machine(),
               "date": datetime.date.today().isoformat(), "wall_s": round(time.time() - started, 1),
               "command": " ".join(["python tools/experiments/redundancy.py", *argv])}
    summary = write_report(runs, out, context)
    for line in summary["verdict"]:
        log(line)
    log(f"done in {context['wall_s'] / 60:.1f} min; report: {os.path.join(out, 'summary.md')}")


def main(argv=None) -> None:
    run_tool(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
