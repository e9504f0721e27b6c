"""Preprocessing throughput: ``tools/preprocess_data.py`` tokens/s vs the raw tokenizer's batch encoding.

    python tools/bench/preprocess.py --rounds 5 --workers 2 --megabytes 16        # SentencePiece
    python tools/bench/preprocess.py --rounds 5 --workers 2 --tokenizer-type GPT2BPETokenizer \\
        --vocab-file vocab.json --merge-file merges.txt
    python tools/bench/preprocess.py --rounds 5 --workers 2 --stand-ins /tmp/stand_ins   # all five types
    python tools/bench/preprocess.py --rounds 5 --workers 2 --stand-ins /tmp/s --types NullTokenizer

*Preprocess* is :func:`tools.preprocess_data.preprocess` end to end (read the JSONL, parse,
tokenise in ``--workers`` processes, write ``.bin``/``.idx``), timed around the call. *Raw* is the
ceiling: the same texts, already in memory, through the tokenizer's own batch encoder on
``--workers`` threads (SentencePiece's ``encode(texts, num_threads)``, the Rust ``encode_batch``
of GPT-2 BPE and Hugging Face, tiktoken's ``encode_batch``; NullTokenizer has none, so one
thread), no JSON, no I/O. Both count the same tokens (checked). The tokenizer flags are the
training's; ``--stand-ins DIR`` instead trains stand-in files of every type on the benchmark's
text (:mod:`tools.data.stand_in_tokenizers`, ``--stand-in-vocab`` pieces) and measures each
(``--types``: some of them), then prints the five figures together. The input is ``--input``, or
the committed fixture corpus repeated to ``--megabytes``. The figure is the median over ABBA
rounds of ``tokens/s preprocess / tokens/s raw``. Target: >= 0.8.

Each round also prints the CPU seconds of each variant (this process and its worker processes)
and the load average, and each type the median ratio of CPU time per token, raw / preprocess. On
a machine busy with other work the benchmark's share of the CPU can fall below one core; then
neither variant can use its second core and the throughput ratio tends to that CPU ratio (the
cost of reading, parsing, moving and writing the tokens on top of encoding them), which is the
figure to compare such runs with.
"""

if not __package__:  # run as a file: the repository root, not tools/bench/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import argparse
import json
import os
import resource
import tempfile
import time

from megatron_patch.launch import ROOT
from megatron_patch.tokenizer import TOKENIZER_TYPES, add_tokenizer_flags, build_tokenizer, tokenizer_settings
from tools.bench.abba import interleave, report_ratio, spread
from tools.bench.harness import machine
from tools.data.fixtures import NAMES, fixture_path
from tools.preprocess_data import preprocess

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


def time_preprocess(input_path: str, settings: dict, workers: int) -> tuple[int, float]:
    """(tokens, seconds) of one ``preprocess`` run into a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = preprocess([input_path], os.path.join(tmp, "bench"), settings, workers=workers, log_interval=0)
        return sum(result.tokens.values()), time.perf_counter() - start


def time_raw(texts: list[str], tokenizer, workers: int) -> tuple[int, float]:
    """(tokens, seconds) of the tokenizer's batch encoding of ``texts`` on ``workers`` threads."""
    start = time.perf_counter()
    ids = tokenizer.tokenize_batch(texts, threads=workers)
    seconds = time.perf_counter() - start
    return sum(len(x) for x in ids), seconds


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its children that have ended (the workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench(input_path: str, texts: list[str], settings: dict, workers: int, rounds: int) -> float:
    """The median ratio preprocess / raw of one tokenizer (printed with its spread and the target)."""
    tokenizer = build_tokenizer(**settings)
    counts, cpu = {}, {"preprocess": [], "raw": []}

    def run(variant):
        start = cpu_seconds()
        if variant == "preprocess":
            tokens, seconds = time_preprocess(input_path, settings, workers)
        else:
            tokens, seconds = time_raw(texts, tokenizer, workers)
        cpu[variant].append(cpu_seconds() - start)
        counts.setdefault(variant, tokens)
        print(f"  {variant:>10}: {tokens / seconds:10.0f} tokens/s ({tokens} tokens, {seconds:.2f} s, "
              f"{cpu[variant][-1]:.2f} CPU s, load {os.getloadavg()[0]:.1f})", flush=True)
        return tokens / seconds

    results = interleave(["preprocess", "raw"], rounds, run)
    if counts["preprocess"] != counts["raw"]:
        raise SystemExit(f"token counts differ: preprocess {counts['preprocess']}, raw {counts['raw']}")
    kind = settings["tokenizer_type"]
    cpu_ratios = [r / p for p, r in zip(cpu["preprocess"], cpu["raw"]) if p > 0]
    if cpu_ratios:
        print(f"CPU time per token, {kind} (raw / preprocess, median [min, max] of {len(cpu_ratios)} rounds): "
              f"{spread(cpu_ratios)}")
    return report_ratio(results, "preprocess", "raw", what=f"preprocessing throughput, {kind}",
                        unit="tokens/s", target=TARGET, at_most=False)


def stand_in_settings(directory: str, texts: list[str], vocab_size: int, types=TOKENIZER_TYPES) -> dict:
    """Stand-ins of the ``types`` trained on (at most 8 MB of) the distinct ``texts``; NullTokenizer reads ids
    as text (and needs no training)."""
    from tools.data.stand_in_tokenizers import NULL_STAND_IN, write_tokenizer_files

    if set(types) == {"NullTokenizer"}:
        return {"NullTokenizer": dict(NULL_STAND_IN)}
    sample, size = [], 0
    for text in dict.fromkeys(texts):
        if size > 8e6:
            break
        sample.append(text)
        size += len(text)
    made = write_tokenizer_files(directory, sample, vocab_size, vocab_size)
    return {kind: made[kind] for kind in types}


def null_input(texts: list[str], out_path: str) -> str:
    """The texts as NullTokenizer input: each text's UTF-8 bytes as ids below 999, separated by spaces."""
    with open(out_path, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": " ".join(str(b % 999) for b in text.encode("utf-8"))}) + "\n")
    return out_path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="preprocess.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="JSONL with a 'text' key (default: the fixtures repeated to --megabytes)")
    p.add_argument("--megabytes", type=float, default=16.0)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes / threads")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--stand-ins", metavar="DIR", help="train stand-in files of every tokenizer type here and "
                                                      "measure each (instead of the tokenizer flags)")
    p.add_argument("--stand-in-vocab", type=int, default=16000,
                   help="vocabulary of the stand-ins (at most: a small text gives fewer pieces)")
    p.add_argument("--types", nargs="+", choices=TOKENIZER_TYPES, default=list(TOKENIZER_TYPES),
                   help="with --stand-ins: the tokenizer types to measure (default: all five)")
    add_tokenizer_flags(p)
    p.epilog = f"default --tokenizer-model for SentencePieceTokenizer: {DEFAULT_TOKENIZER}"
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # The raw Rust encoders use a pool of --workers threads (read once, at their first batch).
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.workers))
    settings = {**tokenizer_settings(args), "vocab_size": args.vocab_size}
    if args.tokenizer_type == "SentencePieceTokenizer" and args.tokenizer_model is None:
        settings["tokenizer_model"] = DEFAULT_TOKENIZER
        if not os.path.isfile(DEFAULT_TOKENIZER) and not args.stand_ins:
            raise SystemExit(f"--tokenizer-model {DEFAULT_TOKENIZER}: no such file "
                             "(build it with tools/prepare_data.py, or pass one)")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        input_path = args.input or write_repeated_fixtures(os.path.join(tmp, "corpus.jsonl"), args.megabytes)
        texts = read_texts(input_path)
        print(f"input: {os.path.getsize(input_path) / 1e6:.1f} MB, {len(texts)} documents, {args.workers} worker(s)")
        if not args.stand_ins:
            return bench(input_path, texts, settings, args.workers, args.rounds)
        ratios = {}
        for kind, stand_in in stand_in_settings(args.stand_ins, texts, args.stand_in_vocab, args.types).items():
            path = null_input(texts, os.path.join(tmp, "ids.jsonl")) if kind == "NullTokenizer" else input_path
            print(f"{kind}: {build_tokenizer(**stand_in).vocab_size} ids", flush=True)
            ratios[kind] = bench(path, read_texts(path), stand_in, args.workers, args.rounds)
        print(f"preprocess / raw tokens/s, {args.workers} worker(s), median of {args.rounds} rounds "
              f"(target >= {TARGET}):")
        for kind, ratio in ratios.items():
            print(f"  {kind:<24} {ratio:.3g}  {'met' if ratio >= TARGET else 'NOT met'}")
        return ratios


if __name__ == "__main__":
    main()
