"""Tokenise corpus files into megatron-core indexed datasets (``.bin`` + ``.idx``).

    python tools/preprocess_data.py --input 'shards/*.jsonl.zst' --output-prefix data/my \\
        --tokenizer-type GPT2BPETokenizer --vocab-file vocab.json --merge-file merges.txt \\
        --append-eod --workers 2

Flag names follow Megatron-LM's ``tools/preprocess_data.py``; the tokenizer flags are the
training's (``pretrain_*.py``), so both use the same ids and end-of-document id. The inputs are
``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` or ``.parquet`` files, globs or directories, read as
streams, in the order given. One dataset per JSON key (Parquet column),
``{output-prefix}_{key}_document.bin/.idx``; that path without the extension is what
``--data-path`` takes. Tokens are stored in the smallest dtype that holds the vocabulary (uint16
below 65,500, else int32: megatron-core's ``DType.optimal_dtype``). Documents stay in input order
whatever ``--workers`` is, so the bytes do not depend on it. Empty documents are dropped (and
counted). Output files appear only when complete. A bad line stops the run with one ``error:``
line naming ``file:line`` (``--on-bad-line skip`` skips and counts them).
"""

if not __package__:  # run as a file: the repository root, not tools/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", ".."))

import argparse
import dataclasses
import sys
from typing import Dict, List, Sequence

from megatron_patch.arguments import padded_vocab_size
from megatron_patch.tokenizer import add_tokenizer_flags, build_tokenizer, tokenizer_settings
from tools.cli import ToolParser, run_tool
from tools.data.corpus_files import expand_inputs
from tools.data.encode_corpus import EncodeJob, EncodeResult, encode_corpus
from tools.data.jsonl_documents import ON_BAD_LINE_CHOICES, select_texts


@dataclasses.dataclass(frozen=True)
class SelectKeys:
    """Each key's text goes to the dataset of that key (a picklable :data:`~tools.data.encode_corpus.Select`)."""

    keys: tuple

    def __call__(self, record: dict):
        return select_texts(record, self.keys)


@dataclasses.dataclass
class PreprocessResult(EncodeResult):
    """An :class:`EncodeResult` with the dataset prefix of each key and the tokenizer's vocabulary and EOD."""

    prefixes: Dict[str, str] = dataclasses.field(default_factory=dict)
    vocab_size: int = 0
    eod: int = 0


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron-LM's naming: ``{output_prefix}_{key}_document``."""
    return f"{output_prefix}_{key}_document"


def preprocess(inputs: Sequence[str], output_prefix: str, tokenizer: dict, *, json_keys: Sequence[str] = ("text",),
               append_eod: bool = False, workers: int = 1, on_bad_line: str = "fail",
               log_interval: float = 10.0) -> PreprocessResult:
    """Tokenise the files ``inputs`` expands to (see the module docstring) with the tokenizer of the
    flags ``tokenizer`` (:func:`megatron_patch.tokenizer.build_tokenizer` keywords)."""
    paths = expand_inputs(inputs)
    built = build_tokenizer(**tokenizer)  # a bad tokenizer file fails here, before any worker starts
    prefixes = {key: output_prefix_for(output_prefix, key) for key in json_keys}
    job = EncodeJob(tokenizer, SelectKeys(tuple(json_keys)), append_eod)
    result = encode_corpus(paths, prefixes, job, vocab_size=built.vocab_size, columns=json_keys, workers=workers,
                           on_bad_line=on_bad_line, log_interval=log_interval, tokenizer=built)
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    return PreprocessResult(**fields, prefixes=prefixes, vocab_size=built.vocab_size, eod=built.eod)


def preprocess_jsonl(input_path: str, output_prefix: str, tokenizer_model: str, **kwargs) -> PreprocessResult:
    """:func:`preprocess` with a SentencePiece ``.model`` (the corpus tokenizer of tools/prepare_data.py)."""
    settings = {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": tokenizer_model}
    return preprocess([input_path], output_prefix, settings, **kwargs)


def add_input_flags(parser: argparse.ArgumentParser) -> None:
    """The reading flags shared with tools/prepare_slimpajama.py."""
    parser.add_argument("--input", nargs="+", required=True,
                        help=".jsonl, .jsonl.gz, .jsonl.zst or .parquet files, globs (quoted) or directories")
    parser.add_argument("--workers", type=int, default=1, help="tokeniser processes")
    parser.add_argument("--on-bad-line", choices=ON_BAD_LINE_CHOICES, default="fail",
                        help="lines that are not UTF-8 JSON objects with the keys: stop at the first, or skip "
                             "them and report their line numbers")
    parser.add_argument("--log-interval", type=float, default=10.0, help="seconds between progress lines (0: none)")
    add_tokenizer_flags(parser)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = ToolParser(prog="preprocess_data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-prefix", required=True,
                        help="writes {prefix}_{key}_document.bin/.idx for each --json-keys key")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys (Parquet columns) to tokenise")
    parser.add_argument("--append-eod", action="store_true",
                        help="end every document with the tokenizer's end-of-document id")
    add_input_flags(parser)
    return parser.parse_args(argv)


def describe_tokenizer(args: argparse.Namespace, vocab_size: int, eod: int) -> str:
    """The tokenizer line of the summary: type, vocabulary and its padding (as training pads it at TP 1), EOD."""
    padded = padded_vocab_size(vocab_size, args.make_vocab_size_divisible_by, 1)
    return (f"tokenizer {args.tokenizer_type}: vocabulary {vocab_size} (model rows {padded} with "
            f"--make-vocab-size-divisible-by {args.make_vocab_size_divisible_by} at TP 1), EOD id {eod}")


def _main(argv: List[str]) -> None:
    args = parse_args(argv)
    result = preprocess(args.input, args.output_prefix, {**tokenizer_settings(args), "vocab_size": args.vocab_size},
                        json_keys=args.json_keys, append_eod=args.append_eod, workers=args.workers,
                        on_bad_line=args.on_bad_line, log_interval=args.log_interval)
    for key, prefix in result.prefixes.items():
        print(f"[preprocess_data] wrote {prefix}.bin/.idx: {result.documents[key]} documents, "
              f"{result.tokens[key]} tokens ({result.dtype}), {result.empty_documents[key]} empty "
              f"documents dropped, {result.seconds:.1f} s", file=sys.stderr)
    print(f"[preprocess_data] {describe_tokenizer(args, result.vocab_size, result.eod)}", file=sys.stderr)
    if result.bad_lines.total:
        print(f"[preprocess_data] {result.bad_lines.summary()}", file=sys.stderr)


def main(argv: List[str] = None) -> None:
    run_tool(_main, argv)  # bad input, a bad line (BadLineError) included: one `error:` line, exit status 2


if __name__ == "__main__":
    main()
