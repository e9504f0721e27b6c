"""Preprocessing throughput: ``tools/preprocess_data.py`` tokens/s vs raw SentencePiece encoding.

    python tools/bench/preprocess.py --rounds 5 --workers 2 --megabytes 16

*Preprocess* is :func:`tools.preprocess_data.preprocess_jsonl` end to end (read the JSONL,
parse, tokenise in ``--workers`` processes, write ``.bin``/``.idx``), timed around the call.
*Raw* is the ceiling: the same texts, already in memory, through
``SentencePieceProcessor.encode(texts, num_threads=workers)`` (C++ threads, no JSON, no I/O),
on the same number of cores. Both count the same tokens (checked). The input is ``--input``,
or the committed fixture corpus repeated to ``--megabytes``. The figure is the median over ABBA
rounds of ``tokens/s preprocess / tokens/s raw``. Target: >= 0.8.
"""

if not __package__:  # run as a file: the repository root, not tools/bench/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import argparse
import json
import os
import tempfile
import time

import sentencepiece as spm

from megatron_patch.launch import ROOT
from tools.bench.abba import interleave, report_ratio
from tools.bench.harness import machine
from tools.data.fixtures import NAMES, fixture_path
from tools.preprocess_data import preprocess_jsonl

TARGET = 0.8
DEFAULT_TOKENIZER = os.path.join(ROOT, "data", "corpus", "tokenizer.model")  # what tools/prepare_data.py builds


def write_repeated_fixtures(path: str, megabytes: float) -> str:
    """A JSONL of the committed fixture documents, repeated until it holds ``megabytes`` MB."""
    lines = []
    for name in sorted(NAMES):  # file-name order
        with open(fixture_path(name), "rb") as handle:
            lines += [line for line in handle if line.strip()]
    target, written = megabytes * 1e6, 0
    with open(path, "wb") as handle:
        while written < target:
            for line in lines:
                handle.write(line)
                written += len(line)
    return path


def read_texts(path: str, key: str = "text") -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)[key] for line in handle if line.strip()]


def time_preprocess(input_path: str, tokenizer_model: str, workers: int) -> tuple[int, float]:
    """(tokens, seconds) of one ``preprocess_jsonl`` run into a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = preprocess_jsonl(input_path, os.path.join(tmp, "bench"), tokenizer_model,
                                  workers=workers, log_interval=0)
        return sum(result.tokens.values()), time.perf_counter() - start


def time_raw(texts: list[str], processor: spm.SentencePieceProcessor, workers: int) -> tuple[int, float]:
    """(tokens, seconds) of SentencePiece's batch encoding of ``texts`` on ``workers`` threads."""
    start = time.perf_counter()
    ids = processor.encode(texts, num_threads=workers)
    seconds = time.perf_counter() - start
    return sum(len(x) for x in ids), seconds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="JSONL with a 'text' key (default: the fixtures repeated to --megabytes)")
    p.add_argument("--megabytes", type=float, default=16.0)
    p.add_argument("--tokenizer-model", default=DEFAULT_TOKENIZER,
                   help="SentencePiece model (default: the one tools/prepare_data.py builds)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes / threads")
    p.add_argument("--rounds", type=int, default=5)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.tokenizer_model):
        raise SystemExit(f"--tokenizer-model {args.tokenizer_model}: no such file "
                         "(build it with tools/prepare_data.py, or pass one)")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        input_path = args.input or write_repeated_fixtures(os.path.join(tmp, "corpus.jsonl"), args.megabytes)
        texts = read_texts(input_path)
        processor = spm.SentencePieceProcessor(model_file=args.tokenizer_model)
        counts = {}

        def run(variant):
            if variant == "preprocess":
                tokens, seconds = time_preprocess(input_path, args.tokenizer_model, args.workers)
            else:
                tokens, seconds = time_raw(texts, processor, args.workers)
            counts.setdefault(variant, tokens)
            print(f"  {variant:>10}: {tokens / seconds:10.0f} tokens/s ({tokens} tokens, {seconds:.2f} s)", flush=True)
            return tokens / seconds

        print(f"input: {os.path.getsize(input_path) / 1e6:.1f} MB, {len(texts)} documents, "
              f"{args.workers} worker(s)")
        results = interleave(["preprocess", "raw"], args.rounds, run)
    if counts["preprocess"] != counts["raw"]:
        raise SystemExit(f"token counts differ: preprocess {counts['preprocess']}, raw {counts['raw']}")
    return report_ratio(results, "preprocess", "raw", what="preprocessing throughput", unit="tokens/s",
                        target=TARGET, at_most=False)


if __name__ == "__main__":
    main()
