"""Train a SentencePiece tokenizer (BPE by default) on the text of corpus files.

    python tools/train_tokenizer.py --input data/corpus/jsonl/*_train.jsonl \
        --output-model data/corpus/tokenizer.model --vocab-size 8192
    python tools/train_tokenizer.py --input 'slimpajama/train/chunk1/*.jsonl.zst' fineweb/ \
        --output-model tok.model --vocab-size 32000

The inputs are what ``tools/preprocess_data.py`` reads, through the same reader
(:mod:`tools.data.corpus_files`): ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` or ``.parquet`` files
(``--json-keys`` are the Parquet columns), globs or directories, streamed in the order given.

Defaults suit a small English + code corpus: byte fallback (no unknown tokens), digits split,
text kept as it is (identity normalisation, whitespace runs kept, so code indentation survives).
Ids: unk 0, bos 1, eos 2 (used as end-of-document), no pad; megatron-core's SentencePiece
tokenizer reads the model as it is. Training sees each document's non-empty lines, at most
``--max-bytes-per-input`` from each input file so that every domain counts (reading stops there).
The same inputs and flags give the same vocabulary; the output is written atomically. Bad input
is one ``error:`` line (a bad line names ``file:line``; ``--on-bad-line skip`` skips them).
"""

if not __package__:  # run as a file: the repository root, not tools/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", ".."))

import argparse
import contextlib
import io
import sys
import time
from typing import Iterator, List, Sequence

import sentencepiece as spm

from megatron_patch.errors import ArgumentError, one_line
from megatron_patch.files import write_atomically
from tools.cli import ToolParser, run_tool
from tools.data.corpus_files import expand_inputs, iter_texts
from tools.data.jsonl_documents import ON_BAD_LINE_CHOICES, BadLineReport

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2


def document_lines(path: str, json_keys: Sequence[str], on_bad_line: str) -> Iterator[str]:
    """The non-empty lines of the documents of one corpus file, in file order."""
    report = BadLineReport(path)
    try:
        for _, _, texts in iter_texts([path], json_keys, report, on_bad_line):
            for text in texts.values():
                yield from (line for line in text.split("\n") if line.strip())
    finally:  # also when the byte cap stops reading early
        if report.total:
            print(f"[train_tokenizer] {report.summary()}", file=sys.stderr)


def training_lines(
    paths: Sequence[str], json_keys: Sequence[str], max_bytes_per_input: int, on_bad_line: str
) -> Iterator[str]:
    """The lines the tokenizer trains on: at most ``max_bytes_per_input`` from each file."""
    for path in paths:
        taken = 0
        with contextlib.closing(document_lines(path, json_keys, on_bad_line)) as lines:  # closes the file early
            for line in lines:
                yield line
                taken += len(line.encode("utf-8"))
                if taken >= max_bytes_per_input:
                    break


class _Source:
    """The training lines, keeping the error raised while SentencePiece reads them (it re-raises any
    exception of its iterator as a RuntimeError with the traceback in the message)."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines, self.error = lines, None

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self.lines
        except Exception as err:  # noqa: BLE001 - re-raised as it is by train_tokenizer
            self.error = err
            raise


def train_tokenizer(
    inputs: Sequence[str],
    output_model: str,
    *,
    vocab_size: int = 8192,
    model_type: str = "bpe",
    json_keys: Sequence[str] = ("text",),
    max_bytes_per_input: int = 2_000_000,
    character_coverage: float = 0.9995,
    num_threads: int = 2,
    on_bad_line: str = "fail",
) -> spm.SentencePieceProcessor:
    """Train a SentencePiece model on the corpus files ``inputs`` (files, globs, directories) and
    write it to ``output_model``.

    Returns:
        The trained model, loaded.

    Raises:
        ArgumentError: a bad flag value or input (a file, a bad line, a vocabulary too large).
    """
    if not output_model.endswith(".model"):
        raise ArgumentError(f"--output-model {output_model}: the file name must end in '.model'")
    paths = expand_inputs(inputs)  # a missing or unknown input fails here, before training starts
    buffer = io.BytesIO()
    source = _Source(training_lines(paths, json_keys, max_bytes_per_input, on_bad_line))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(source),
            model_writer=buffer,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as error:
        if source.error is not None:
            raise source.error from None
        raise ArgumentError(
            f"--vocab-size {vocab_size}: SentencePiece training failed on {' '.join(inputs)} "
            f"({one_line(error, 200)}); change --vocab-size (one too large for the text is the usual cause)"
        ) from None
    write_atomically(output_model, buffer.getvalue())
    return spm.SentencePieceProcessor(model_proto=buffer.getvalue())


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = ToolParser(prog="train_tokenizer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True,
                        help=".jsonl, .jsonl.gz, .jsonl.zst or .parquet files, globs (quoted) or directories")
    parser.add_argument("--output-model", required=True, help="where to write the .model file")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--model-type", default="bpe", choices=("bpe", "unigram", "char", "word"))
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys (Parquet columns) holding the text")
    parser.add_argument("--max-bytes-per-input", type=int, default=2_000_000,
                        help="train on at most this many bytes of text from each input file")
    parser.add_argument("--character-coverage", type=float, default=0.9995,
                        help="share of characters covered by pieces; the rest fall back to bytes")
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--on-bad-line", choices=ON_BAD_LINE_CHOICES, default="fail",
                        help="lines that are not UTF-8 JSON objects with the keys: stop at the first, or skip "
                             "them and report their line numbers")
    return parser.parse_args(argv)


def _main(argv: List[str]) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    model = train_tokenizer(
        args.input,
        args.output_model,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        json_keys=args.json_keys,
        max_bytes_per_input=args.max_bytes_per_input,
        character_coverage=args.character_coverage,
        num_threads=args.num_threads,
        on_bad_line=args.on_bad_line,
    )
    print(
        f"[train_tokenizer] wrote {args.output_model}: {model.get_piece_size()} pieces "
        f"({args.model_type}) in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )


def main(argv: List[str] = None) -> None:
    run_tool(_main, argv)  # bad input, a bad line (BadLineError) included: one `error:` line, exit status 2


if __name__ == "__main__":
    main()
