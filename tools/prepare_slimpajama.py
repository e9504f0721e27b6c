"""SlimPajama in one command: the paper's seven domains, a train and a validation split each, indexed.

    python tools/prepare_slimpajama.py --input 'SlimPajama-627B/train/chunk1/*.jsonl.zst' --output-dir OUT \\
        --tokenizer-type GPT2BPETokenizer --vocab-file vocab.json --merge-file merges.txt --workers 2

Each document (``{"text": ..., "meta": {"redpajama_set_name": "RedPajamaArXiv"}}`` per line, as
SlimPajama ships its ``.jsonl.zst`` shards; SlimPajama-6B's Parquet files have the same columns)
goes to its domain: arxiv, book, cc, c4, github, stackexchange, wikipedia. The validation split
is ``--valid-input`` (SlimPajama's own ``validation/`` shards) or, without it, the documents whose
text hashes (sha256 with ``--seed``) below ``--valid-fraction``: deterministic, independent of
``--workers`` and the file order, and exact duplicates always land on the same side.

Writes ``OUT/{domain}_{train,valid}_text_document.bin/.idx`` (end-of-document after every
document), ``OUT/manifest.json``, ``OUT/flags.txt`` and ``OUT/slurm.env`` (the same for the sbatch
scripts: ``DATA_PATH=...`` and so on), and prints the training flags:
``--train-data-path`` (one prefix per domain; weight them with ``--domain-weights uniform|doge|doremi``),
``--valid-data-path`` and the tokenizer flags.
"""

if not __package__:  # run as a file: the repository root, not tools/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", ".."))

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import sys
from typing import Dict, List, Optional

from megatron_patch.domains import SLIMPAJAMA_DOMAINS
from megatron_patch.errors import ArgumentError
from megatron_patch.files import write_atomically, write_json_atomically
from megatron_patch.tokenizer import build_tokenizer, tokenizer_flags, tokenizer_settings
from tools.data.corpus_files import expand_inputs
from tools.data.encode_corpus import EncodeJob, encode_corpus
from tools.cli import ToolParser, run_tool
from tools.preprocess_data import add_input_flags

# meta.redpajama_set_name -> the paper's domain name.
SET_NAMES = {"RedPajamaArXiv": "arxiv", "RedPajamaBook": "book", "RedPajamaCommonCrawl": "cc", "RedPajamaC4": "c4",
             "RedPajamaGithub": "github", "RedPajamaStackExchange": "stackexchange",
             "RedPajamaWikipedia": "wikipedia"}
SPLITS = ("train", "valid")


def held_out(text: str, seed: int, fraction: float) -> bool:
    """Whether ``text`` is in the validation split: its seeded sha256, as a number in [0, 1), is below ``fraction``."""
    digest = hashlib.sha256(f"{seed}:{text}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclasses.dataclass(frozen=True)
class SelectDomain:
    """A SlimPajama record -> ``{"{domain}_{split}": text}`` (a picklable Select)."""

    split: Optional[str]  # every document to this split, or None: held out by hash
    valid_fraction: float = 0.0
    seed: int = 1234

    def __call__(self, record: dict):
        text, meta = record.get("text"), record.get("meta")
        if not isinstance(text, str):
            return None, "missing key 'text'" if text is None else "value is not a string ('text')"
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError:
                return None, "meta is not a JSON object"
        name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
        if name not in SET_NAMES:
            return None, f"unknown meta.redpajama_set_name {name!r}"
        split = self.split or ("valid" if held_out(text, self.seed, self.valid_fraction) else "train")
        return {f"{SET_NAMES[name]}_{split}": text}, None


def prefix_of(output_dir: str, domain: str, split: str) -> str:
    return os.path.join(os.path.abspath(output_dir), f"{domain}_{split}_text_document")


def _encode(paths, output_dir, splits, select, settings, tokenizer, args) -> Dict[str, dict]:
    """One pass over ``paths`` into the datasets of ``splits``; ``{"{domain}_{split}": counts}``."""
    outputs = {f"{d}_{s}": prefix_of(output_dir, d, s) for s in splits for d in SLIMPAJAMA_DOMAINS}
    result = encode_corpus(paths, outputs, EncodeJob(settings, select, append_eod=True),
                           vocab_size=tokenizer.vocab_size, columns=("text", "meta"), workers=args.workers,
                           on_bad_line=args.on_bad_line, log_interval=args.log_interval, label="prepare_slimpajama",
                           tokenizer=tokenizer)
    if result.bad_lines.total:
        print(f"[prepare_slimpajama] {result.bad_lines.summary()}", file=sys.stderr)
    counts = {}
    for name, prefix in outputs.items():
        if result.documents[name] == 0:  # megatron-core cannot read an empty dataset: leave none behind
            for ext in (".bin", ".idx"):
                os.remove(prefix + ext)
            continue
        counts[name] = {"prefix": prefix, "documents": result.documents[name], "tokens": result.tokens[name]}
    return counts


def _prefixes(counts: Dict[str, dict], split: str) -> List[str]:
    return [counts[f"{d}_{split}"]["prefix"] for d in SLIMPAJAMA_DOMAINS if f"{d}_{split}" in counts]


def _absolute(settings: dict) -> dict:
    """The tokenizer flags with their files as absolute paths (the flags work from any directory)."""
    files = ("tokenizer_model", "vocab_file", "merge_file")
    return {k: os.path.abspath(v) if k in files and v is not None else v for k, v in settings.items()}


def training_flags(counts: Dict[str, dict], settings: dict) -> List[str]:
    """``--train-data-path ... --valid-data-path ...`` plus the tokenizer flags, for pretrain_gpt.py."""
    train, valid = _prefixes(counts, "train"), _prefixes(counts, "valid")
    flags = ["--train-data-path", *train]
    if len(train) == len(SLIMPAJAMA_DOMAINS):
        flags += ["--domain-weights", "uniform"]
    flags += ["--valid-data-path", *valid] if valid else []
    return flags + tokenizer_flags(_absolute(settings))


def slurm_env(counts: Dict[str, dict], settings: dict) -> str:
    """The same for the sbatch scripts (scripts/slurm/common.sh's variables), one ``NAME=value`` a line."""
    settings = _absolute(settings)
    names = {"tokenizer_type": "TOKENIZER_TYPE", "tokenizer_model": "TOKENIZER_MODEL", "vocab_file": "VOCAB_FILE",
             "merge_file": "MERGE_FILE"}
    values = {"DATA_PATH": " ".join(_prefixes(counts, "train")), "VALID_DATA_PATH": " ".join(_prefixes(counts, "valid"))}
    values |= {names[k]: v for k, v in settings.items() if k in names and v is not None}
    extra = tokenizer_flags({k: v for k, v in settings.items() if k not in names or k == "tokenizer_type"})[2:]
    values |= {"EXTRA_ARGS": " ".join(extra)} if extra else {}
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items())


def prepare_slimpajama(args: argparse.Namespace) -> dict:
    """Split, tokenise and index (see the module docstring); returns the manifest."""
    train_paths = expand_inputs(args.input)
    valid_paths = expand_inputs(args.valid_input, "--valid-input") if args.valid_input else []
    if not valid_paths and not 0 < args.valid_fraction < 1:
        raise ArgumentError(f"--valid-fraction {args.valid_fraction}: must be in (0, 1) without --valid-input")
    settings = {**tokenizer_settings(args), "vocab_size": args.vocab_size}
    tokenizer = build_tokenizer(**settings)
    if valid_paths:
        counts = _encode(train_paths, args.output_dir, ("train",), SelectDomain("train"), settings,
                         tokenizer, args)
        counts |= _encode(valid_paths, args.output_dir, ("valid",), SelectDomain("valid"), settings,
                          tokenizer, args)
    else:
        counts = _encode(train_paths, args.output_dir, SPLITS, SelectDomain(None, args.valid_fraction, args.seed),
                         settings, tokenizer, args)
    missing = [d for d in SLIMPAJAMA_DOMAINS if f"{d}_train" not in counts]
    if missing:
        print(f"[prepare_slimpajama] warning: no training document of {', '.join(missing)}; --domain-weights "
              "needs all seven domains, so give --train-data-path weights of your own", file=sys.stderr)
    flags = training_flags(counts, settings)
    manifest = {"domains": {d: {s: counts[f"{d}_{s}"] for s in SPLITS if f"{d}_{s}" in counts}
                            for d in SLIMPAJAMA_DOMAINS},
                "vocab_size": tokenizer.vocab_size, "eod_id": tokenizer.eod, "tokenizer": settings,
                "inputs": train_paths, "valid_inputs": valid_paths, "valid_fraction": args.valid_fraction,
                "seed": args.seed, "flags": flags}
    write_json_atomically(os.path.join(args.output_dir, "manifest.json"), manifest, indent=1)
    write_atomically(os.path.join(args.output_dir, "flags.txt"), shlex.join(flags) + "\n")
    write_atomically(os.path.join(args.output_dir, "slurm.env"), slurm_env(counts, settings))
    return manifest


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = ToolParser(prog="prepare_slimpajama.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True, help="where the datasets, manifest.json and flags.txt go")
    parser.add_argument("--valid-input", nargs="+", help="validation files (SlimPajama's validation/ shards); "
                                                         "without it, --valid-fraction of the input is held out")
    parser.add_argument("--valid-fraction", type=float, default=0.005,
                        help="share of the documents held out for validation without --valid-input")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the validation hash")
    add_input_flags(parser)
    return parser.parse_args(argv)


def _main(argv: List[str]) -> dict:
    manifest = prepare_slimpajama(parse_args(argv))
    for domain, splits in manifest["domains"].items():
        sizes = ", ".join(f"{s} {c['documents']} documents / {c['tokens']} tokens" for s, c in splits.items())
        print(f"[prepare_slimpajama] {domain}: {sizes or 'no document'}", file=sys.stderr)
    print(shlex.join(manifest["flags"]))
    return manifest


def main(argv: List[str] = None) -> dict:
    return run_tool(_main, argv)


if __name__ == "__main__":
    main()
