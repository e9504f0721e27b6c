"""The CPU demo: uniform vs LinUpper on a small real-text corpus, with a report.

    make demo                  # ~15 minutes on 2 cores
    make demo ARGS=--quick     # ~2 minutes: committed fixture text, a few iterations

Builds (or reuses) the offline corpus with a redundant domain (near and exact duplicates),
trains a tiny Llama twice from the same seed and data order (``uniform``, then ``linupper``
after a uniform warm-up), each with 2 gloo processes through ``pretrain_llama.py`` so the real
all-gather runs, and writes ``reports/demo/``: plots, ``summary.md`` and ``summary.json``.
"""

import argparse
import json
import warnings
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Recipe (ours, the paper's scaled down): tiny Llama, seq 256, group of 16 samples (micro batch 8
# x DP 2), uniform warm-up for the first fifth of training, then LinUpper at r = 1; validation
# every quarter. 250 iterations keep the whole demo near 15 minutes on 2 idle cores (about 1.4 s
# an iteration there, measured on the shared development machine at best).
FULL = dict(iters=250, micro=8, seq=256, log=10, eval_iters=4, max_bytes=2_000_000)
QUICK = dict(iters=24, micro=4, seq=64, log=2, eval_iters=2, max_bytes=None)


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def prepare(out: str, quick: bool) -> dict:
    """The corpus, tokenizer and indexed datasets (cached in ``out``)."""
    from tools.prepare_data import build_fixture_dataset, prepare_data
    from tools.build_corpus import CorpusConfig

    if quick:
        return build_fixture_dataset(out, with_redundant=True)
    config = CorpusConfig(out_dir=os.path.join(out, "jsonl"), max_bytes_per_domain=FULL["max_bytes"],
                          with_redundant=True)
    return prepare_data(config, out, workers=2)


def train(strategy: str, manifest: dict, recipe: dict, run_dir: str, seed: int) -> str:
    """One 2-process run; returns its metrics file. Prints progress lines with an ETA."""
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + seed % 500),
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
           "--reweight-strategy", strategy, "--reweight-r", "1.0",
           "--reweight-warmup-iters", str(recipe["warmup"]), "--metrics-file", metrics]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if line.startswith(" iteration"):
            it = int(line.split("/")[0].split()[-1])
            eta = (time.time() - start) / it * (recipe["iters"] - it)
            loss = line.split("lm loss:")[1].split("|")[0].strip()
            log(f"{strategy}: iteration {it}/{recipe['iters']}, lm loss {loss}, ETA {eta:.0f} s")
        elif line.startswith(" validation"):
            log(f"{strategy}: {line.strip()}")
    if proc.wait() != 0:
        raise SystemExit(f"[demo] the {strategy} run failed:\n{''.join(tail)}")
    return metrics


def main(argv=None) -> None:
    # megatron-core warns at import that Transformer Engine and apex are absent: expected on a CPU.
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|apex).*")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fixture text, a few iterations (~2 minutes)")
    parser.add_argument("--out", default=os.path.join(ROOT, "reports", "demo"), help="report directory")
    parser.add_argument("--data", default=None, help="corpus directory (default data/corpus or data/fixture)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--iters", type=int, default=None, help="training iterations per run (default 250; 24 with --quick)")
    args = parser.parse_args(argv)
    recipe = dict(QUICK if args.quick else FULL)
    if args.iters:
        recipe["iters"] = args.iters
    recipe.update(warmup=recipe["iters"] // 5, eval=max(1, recipe["iters"] // 4))
    data_dir = args.data or os.path.join(ROOT, "data", "fixture" if args.quick else "corpus")
    started = time.time()
    log(f"preparing data in {data_dir}")
    manifest = prepare(data_dir, args.quick)
    runs = {}
    for strategy in ("uniform", "linupper"):
        run_dir = os.path.join(args.out, strategy)
        os.makedirs(run_dir, exist_ok=True)
        log(f"training {strategy} ({recipe['iters']} iterations, 2 processes)")
        runs[strategy] = train(strategy, manifest, recipe, run_dir, args.seed)
    from tools.demo_report import write_report

    summary = write_report({k: [json.loads(l) for l in open(v)] for k, v in runs.items()}, manifest, args.out)
    log(f"done in {time.time() - started:.0f} s; report: {os.path.join(args.out, 'summary.md')}")
    for name, value in summary["final_valid_loss"].items():
        log(f"final mean validation loss, {name}: {value:.4f}")


if __name__ == "__main__":
    main()
