"""From nothing to per-domain megatron-core datasets and a tokenizer, in one cached command.

    python tools/prepare_data.py --out data/corpus                  # real corpus (one download)
    python tools/prepare_data.py --out data/corpus --max-bytes-per-domain 2000000 --with-redundant
    python tools/prepare_data.py --out /tmp/tiny --fixtures --vocab-size 1024   # offline, seconds

Steps: build the corpus JSONL (tools/build_corpus.py, under ``{out}/jsonl``), train a SentencePiece
tokenizer on the train splits (``{out}/tokenizer.model``, skipped with ``--tokenizer-model``),
tokenise every domain and split with an end-of-document token into
``{out}/{domain}_{split}_text_document.bin/.idx``, and write ``{out}/manifest.json``: the
prefixes, document and token counts, and blend strings for Megatron's ``--train-data-path`` /
``--valid-data-path`` (weights proportional to each domain's tokens, i.e. the natural mixture).
A second run with the same settings returns the existing manifest at once.

Tests and other tools call :func:`build_fixture_dataset` (fixtures only, no network, a few seconds).
"""

if not __package__:  # run as a file: the repository root, not tools/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", ".."))

import argparse
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional

import sentencepiece as spm

from megatron_patch.files import write_json_atomically
from tools.build_corpus import REDUNDANT, CorpusConfig, add_corpus_arguments, build_corpus, corpus_config_from, recorded_settings
from tools.preprocess_data import preprocess_jsonl
from tools.train_tokenizer import train_tokenizer

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def log(message: str) -> None:
    print(f"[prepare_data] {message}", file=sys.stderr, flush=True)


def blend_string(split_records: Dict[str, dict]) -> str:
    """``"w1 prefix1 w2 prefix2 ..."`` with weights proportional to the tokens of each prefix."""
    total = sum(record["tokens"] for record in split_records.values())
    return " ".join(f"{record['tokens'] / total:.6f} {record['prefix']}" for record in split_records.values())


def _reusable_manifest(out_dir: str, settings: dict) -> Optional[dict]:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    prefixes = [s["prefix"] for d in manifest["domains"].values() for s in d["splits"].values()]
    files = [manifest["tokenizer_model"]] + [p + ext for p in prefixes for ext in (".bin", ".idx")]
    if manifest.get("settings") == settings and all(map(os.path.exists, files)):
        return manifest
    return None


def prepare_data(
    corpus_config: CorpusConfig,
    out_dir: str,
    *,
    vocab_size: int = 8192,
    tokenizer_model: Optional[str] = None,
    tokenizer_max_bytes_per_input: int = 2_000_000,
    workers: int = 1,
) -> dict:
    """Build (or reuse) the corpus, tokenizer and indexed datasets under ``out_dir``; return the manifest."""
    out_dir = os.path.abspath(out_dir)
    settings = {
        "corpus": recorded_settings(corpus_config),
        "vocab_size": None if tokenizer_model else vocab_size,
        "tokenizer_model": os.path.abspath(tokenizer_model) if tokenizer_model else None,
        "tokenizer_max_bytes_per_input": tokenizer_max_bytes_per_input,
        "format_version": FORMAT_VERSION,
    }
    manifest = _reusable_manifest(out_dir, settings)
    if manifest is not None:
        log(f"reusing {os.path.join(out_dir, MANIFEST)} (same settings)")
        return manifest
    start = time.perf_counter()
    corpus = build_corpus(corpus_config, workers)
    timings = {"corpus_s": time.perf_counter() - start}

    if tokenizer_model is None:
        start = time.perf_counter()
        tokenizer_model = os.path.join(out_dir, "tokenizer.model")
        train_files = [d["splits"]["train"]["path"] for name, d in corpus["domains"].items() if name != REDUNDANT]
        train_tokenizer(train_files, tokenizer_model, vocab_size=vocab_size,
                        max_bytes_per_input=tokenizer_max_bytes_per_input)
        timings["tokenizer_s"] = time.perf_counter() - start
        log(f"trained {tokenizer_model} ({vocab_size} pieces) in {timings['tokenizer_s']:.1f} s")
    processor = spm.SentencePieceProcessor(model_file=tokenizer_model)

    start = time.perf_counter()
    domains, dtype = {}, None
    for name, domain in corpus["domains"].items():
        domains[name] = {"source": domain["source"], "splits": {}}
        for split, record in domain["splits"].items():
            prefix = os.path.join(out_dir, f"{name}_{split}")
            result = preprocess_jsonl(record["path"], prefix, tokenizer_model, append_eod=True,
                                      workers=workers, log_interval=30.0)
            dtype = result.dtype
            domains[name]["splits"][split] = {
                "prefix": result.prefixes["text"],
                "documents": result.documents["text"],
                "tokens": result.tokens["text"],
                "bytes": record["bytes"],
            }
            log(f"{name}/{split}: {result.documents['text']} documents, {result.tokens['text']} tokens")
    timings["preprocess_s"] = time.perf_counter() - start

    manifest = {
        "settings": settings,
        "tokenizer_model": os.path.abspath(tokenizer_model),
        "vocab_size": processor.get_piece_size(),
        "eod_id": processor.eos_id(),
        "dtype": dtype,
        "domains": domains,
        "train_data_path": blend_string({n: d["splits"]["train"] for n, d in domains.items()}),
        "valid_data_path": blend_string({n: d["splits"]["valid"] for n, d in domains.items() if "valid" in d["splits"]}),
        "tokens": {split: sum(d["splits"][split]["tokens"] for d in domains.values() if split in d["splits"])
                   for split in ("train", "valid")},
        "timings_s": {key: round(value, 2) for key, value in timings.items()},
    }
    write_json_atomically(os.path.join(out_dir, MANIFEST), manifest, indent=2)
    return manifest


def build_fixture_dataset(out_dir: str, *, vocab_size: int = 1024, with_redundant: bool = False) -> dict:
    """A tiny four-domain dataset (books, speeches, code, math) from the committed fixtures.

    No network, a few seconds, about 100k train tokens. Returns the manifest (see
    :func:`prepare_data`); ``manifest["train_data_path"]`` is a ready ``--train-data-path`` blend.
    """
    config = CorpusConfig(out_dir=os.path.join(out_dir, "jsonl"), fixtures=True, with_redundant=with_redundant)
    return prepare_data(config, out_dir, vocab_size=vocab_size)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/corpus", help="output directory")
    add_corpus_arguments(parser)
    parser.add_argument("--vocab-size", type=int, default=8192, help="of the trained tokenizer")
    parser.add_argument("--tokenizer-model", help="use this SentencePiece .model instead of training one")
    parser.add_argument("--clean", action="store_true", help="delete --out first (rebuild everything)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.clean and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    start = time.perf_counter()
    manifest = prepare_data(corpus_config_from(args, os.path.join(args.out, "jsonl")), args.out,
                            vocab_size=args.vocab_size, tokenizer_model=args.tokenizer_model, workers=args.workers)
    log(f"done in {time.perf_counter() - start:.1f} s: {manifest['tokens']['train']} train and "
        f"{manifest['tokens']['valid']} validation tokens; manifest {os.path.join(os.path.abspath(args.out), MANIFEST)}")
    print(f"--train-data-path {manifest['train_data_path']}")
    print(f"--valid-data-path {manifest['valid_data_path']}")


if __name__ == "__main__":
    main()
