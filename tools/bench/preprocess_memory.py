"""Preprocessing memory: the peak RSS of ``tools/preprocess_data.py`` stays flat as the input grows.

    python tools/bench/preprocess_memory.py --megabytes 200 --workers 2 --format .jsonl.zst

Writes the committed fixture corpus repeated to ``--megabytes`` MB of text (and to a tenth of
that) in ``--format``, runs ``python tools/preprocess_data.py`` on each with ``--workers``
processes and the tokenizer flags given (default: a GPT-2-style stand-in BPE of 8,000 pieces
trained on the fixtures, :mod:`tools.data.stand_in_tokenizers`), and samples the resident memory
of its whole process tree (the main process plus its workers) every 50 ms. Prints the peak of
each size and their ratio: streamed preprocessing keeps it near 1 (a reader that held the input
would grow ten-fold).
"""

if not __package__:  # run as a file: the repository root, not tools/bench/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

from megatron_patch.launch import ROOT
from megatron_patch.tokenizer import add_tokenizer_flags, tokenizer_flags, tokenizer_settings
from tools.bench.harness import machine
from tools.data.fixtures import NAMES, read_fixture


def write_corpus(path: str, megabytes: float) -> int:
    """The fixture documents repeated to ``megabytes`` MB of JSONL, compressed as ``path``'s name says; bytes of text."""
    lines = [(json.dumps({"text": d.text}) + "\n").encode() for name in sorted(NAMES) for d in read_fixture(name)]
    with open(path, "wb") as raw:
        if path.endswith(".zst"):
            import zstandard

            sink = zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False)
        elif path.endswith(".gz"):
            import gzip

            sink = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1)
        else:
            sink = raw
        written = 0
        while written < megabytes * 1e6:
            for line in lines:
                sink.write(line)
                written += len(line)
        if sink is not raw:
            sink.close()
    return written


def peak_rss(command: list, interval: float = 0.05) -> tuple[int, float, str]:
    """(peak bytes of the process tree's summed RSS, seconds, stderr tail) of ``command`` run to its end."""
    start = time.perf_counter()
    proc = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.NoSuchProcess:
            pass
        time.sleep(interval)
    stderr = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(f"preprocess_data.py failed ({proc.returncode}): {stderr[-2000:]}")
    return peak, time.perf_counter() - start, stderr.strip().splitlines()[-1] if stderr.strip() else ""


def default_tokenizer_flags(directory: str) -> list:
    """A GPT-2-style stand-in of 8,000 pieces trained on the fixtures (no file of a real model needed)."""
    from tools.data.stand_in_tokenizers import write_tokenizer_files

    texts = [d.text for name in sorted(NAMES) for d in read_fixture(name)]
    return tokenizer_flags(write_tokenizer_files(directory, texts, 8000, 1000)["GPT2BPETokenizer"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="preprocess_memory.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--megabytes", type=float, default=200.0, help="text of the large input, MB")
    p.add_argument("--format", default=".jsonl.zst", choices=(".jsonl", ".jsonl.gz", ".jsonl.zst"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work-dir", help="where the inputs and outputs go (default: a temporary directory)")
    add_tokenizer_flags(p)
    p.set_defaults(tokenizer_type=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        if args.tokenizer_type is None:
            flags = default_tokenizer_flags(os.path.join(tmp, "tok"))
        else:
            flags = tokenizer_flags({**tokenizer_settings(args), "vocab_size": args.vocab_size})
        peaks = {}
        for megabytes in (args.megabytes / 10, args.megabytes):
            path = os.path.join(tmp, f"corpus{args.format}")
            text_bytes = write_corpus(path, megabytes)
            command = [sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", path,
                       "--output-prefix", os.path.join(tmp, "out"), "--append-eod", "--workers", str(args.workers),
                       "--log-interval", "0", *flags]
            peak, seconds, last = peak_rss(command)
            peaks[megabytes] = peak
            print(f"input {text_bytes / 1e6:.0f} MB of text ({os.path.getsize(path) / 1e6:.1f} MB {args.format}): "
                  f"peak RSS {peak / 2**20:.0f} MiB (process tree, {args.workers} workers), {seconds:.0f} s; {last}",
                  flush=True)
            os.remove(path)
        small, large = peaks[args.megabytes / 10], peaks[args.megabytes]
        print(f"peak RSS ratio {args.megabytes:g} MB / {args.megabytes / 10:g} MB input: {large / small:.3f}")
        return large / small


if __name__ == "__main__":
    main()
