"""Tokenise JSONL documents into megatron-core indexed datasets (``.bin`` + ``.idx``).

    python tools/preprocess_data.py --input docs.jsonl --output-prefix data/my \
        --tokenizer-model tokenizer.model --append-eod --workers 2

Flag names follow Megatron-LM's ``tools/preprocess_data.py``; so does the output naming: one
dataset per JSON key, ``{output-prefix}_{key}_document.bin/.idx``, and that path without the
extension is what ``--data-path`` takes. Tokens are stored in the smallest dtype that holds the
vocabulary (uint16 below 65,500 pieces, else int32: megatron-core's ``DType.optimal_dtype``).
Documents stay in input order whatever ``--workers`` is, so the bytes do not depend on it.
Empty documents are dropped (and counted). Output files appear only when complete.
"""

if not __package__:  # run as a file: the repository root, not tools/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", ".."))

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import sentencepiece as spm
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

from megatron_patch.files import atomic_outputs
from tools.data.jsonl_documents import ON_BAD_LINE_CHOICES, BadLineReport, parse_line

# A worker task: consecutive lines up to this many bytes (or one longer line).
BYTES_PER_TASK = 256 * 1024
# (line_number, bad-line reason or None, {key: token ids})
EncodedLine = Tuple[int, Optional[str], Dict[str, np.ndarray]]

_worker_tokenizer: Optional[spm.SentencePieceProcessor] = None
_worker_settings: Tuple[Sequence[str], bool] = ((), False)


@dataclasses.dataclass
class PreprocessResult:
    """What one run wrote: per key, the dataset prefix, documents and tokens; plus the bad lines."""

    prefixes: Dict[str, str]
    documents: Dict[str, int]
    tokens: Dict[str, int]
    empty_documents: Dict[str, int]
    bad_lines: BadLineReport
    dtype: str
    seconds: float


def output_prefix_for(output_prefix: str, key: str) -> str:
    """Megatron-LM's naming: ``{output_prefix}_{key}_document``."""
    return f"{output_prefix}_{key}_document"


def _init_worker(tokenizer_model: str, json_keys: Sequence[str], append_eod: bool) -> None:
    global _worker_tokenizer, _worker_settings
    _worker_tokenizer = spm.SentencePieceProcessor(model_file=tokenizer_model)
    _worker_settings = (tuple(json_keys), append_eod)


def _encode_task(task: Tuple[int, List[bytes]]) -> Tuple[int, List[EncodedLine]]:
    """Parse and tokenise the raw lines of one task; runs in a worker (or in-process).

    Returns:
        The task's size in bytes (for the progress line) and one entry per line.
    """
    first_line, raw_lines = task
    keys, append_eod = _worker_settings
    eod = [_worker_tokenizer.eos_id()] if append_eod else []
    encoded = []
    for offset, raw in enumerate(raw_lines):
        texts, reason = parse_line(raw, keys)
        if texts is None:
            encoded.append((first_line + offset, reason, {}))
            continue
        ids = {key: np.asarray(_worker_tokenizer.encode(text) + eod, dtype=np.int32)
               for key, text in texts.items() if text}
        encoded.append((first_line + offset, None, ids))
    return sum(len(raw) for raw in raw_lines), encoded


def _read_tasks(path: str) -> Iterator[Tuple[int, List[bytes]]]:
    """``(first line number, raw lines)`` in groups of about ``BYTES_PER_TASK`` bytes."""
    with open(path, "rb") as handle:
        line_number, batch, batch_bytes = 1, [], 0
        for raw in handle:
            batch.append(raw)
            batch_bytes += len(raw)
            if batch_bytes >= BYTES_PER_TASK:
                yield line_number, batch
                line_number, batch, batch_bytes = line_number + len(batch), [], 0
        if batch:
            yield line_number, batch


class _Progress:
    """Prints a progress line to stderr every ``interval`` seconds."""

    def __init__(self, path: str, interval: float) -> None:
        self.path, self.interval = path, interval
        self.total_bytes = max(os.path.getsize(path), 1)
        self.bytes_done = self.documents = self.tokens = 0
        self.start = self.last = time.perf_counter()

    def update(self, task_bytes: int, documents: int, tokens: int) -> None:
        self.bytes_done += task_bytes
        self.documents += documents
        self.tokens += tokens
        now = time.perf_counter()
        if self.interval > 0 and now - self.last >= self.interval:
            self.last = now
            print(
                f"[preprocess_data] {self.path}: {100 * self.bytes_done / self.total_bytes:5.1f}% "
                f"{self.documents} documents, {self.tokens} tokens, "
                f"{self.bytes_done / 1e6 / (now - self.start):.1f} MB/s",
                file=sys.stderr,
            )


def _encoded_tasks(
    input_path: str, tokenizer_model: str, json_keys: Sequence[str], append_eod: bool, workers: int
) -> Iterator[Tuple[int, List[EncodedLine]]]:
    """The results of :func:`_encode_task` over the whole file, in input order."""
    tasks = _read_tasks(input_path)
    init_args = (tokenizer_model, tuple(json_keys), append_eod)
    if workers <= 1:
        _init_worker(*init_args)
        yield from map(_encode_task, tasks)
        return
    # fork keeps worker start-up cheap (no re-import of torch); imap keeps input order.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(_encode_task, tasks)


def _add_documents(
    encoded_lines: List[EncodedLine], builders: Dict[str, IndexedDatasetBuilder],
    report: BadLineReport, on_bad_line: str,
    documents: Dict[str, int], tokens: Dict[str, int], empty: Dict[str, int],
) -> Tuple[int, int]:
    """Append one task's documents to the builders and update the counters in place.

    Returns:
        The number of lines that gave documents and the number of tokens added.
    """
    new_documents = new_tokens = 0
    for line_number, reason, ids_per_key in encoded_lines:
        if reason is not None:
            report.add(line_number, reason, on_bad_line)
            continue
        new_documents += 1
        for key, builder in builders.items():
            ids = ids_per_key.get(key)
            if ids is None:
                empty[key] += 1
                continue
            builder.add_document(ids, [ids.size])
            documents[key] += 1
            tokens[key] += ids.size
            new_tokens += ids.size
    return new_documents, new_tokens


def preprocess_jsonl(
    input_path: str,
    output_prefix: str,
    tokenizer_model: str,
    *,
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    workers: int = 1,
    on_bad_line: str = "fail",
    log_interval: float = 10.0,
) -> PreprocessResult:
    """Tokenise ``input_path`` into one indexed dataset per key (see the module docstring)."""
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"--input {input_path}: no such file")
    if not os.path.isfile(tokenizer_model):
        raise FileNotFoundError(f"--tokenizer-model {tokenizer_model}: no such file "
                                "(train one with tools/train_tokenizer.py)")
    vocab_size = spm.SentencePieceProcessor(model_file=tokenizer_model).get_piece_size()
    dtype = DType.optimal_dtype(vocab_size)
    prefixes = {key: output_prefix_for(output_prefix, key) for key in json_keys}
    report = BadLineReport(input_path)
    documents = {key: 0 for key in json_keys}
    tokens = dict(documents)
    empty = dict(documents)
    progress = _Progress(input_path, log_interval)
    final_paths = [path for key in json_keys for path in (prefixes[key] + ".bin", prefixes[key] + ".idx")]
    # .idx files last: each is its dataset's commit marker (see atomic_outputs).
    order = [p for p in final_paths if p.endswith(".bin")] + [p for p in final_paths if p.endswith(".idx")]
    with atomic_outputs(*order) as temporary:
        paths = dict(zip(order, temporary))
        builders = {key: IndexedDatasetBuilder(paths[prefixes[key] + ".bin"], dtype=dtype) for key in json_keys}
        results = _encoded_tasks(input_path, tokenizer_model, json_keys, append_eod, workers)
        try:
            with contextlib.closing(results):
                for task_bytes, encoded_lines in results:
                    new_documents, new_tokens = _add_documents(
                        encoded_lines, builders, report, on_bad_line, documents, tokens, empty)
                    progress.update(task_bytes, new_documents, new_tokens)
        finally:
            for builder in builders.values():
                builder.data_file.close()
        for key in json_keys:
            builders[key].finalize(paths[prefixes[key] + ".idx"])
    return PreprocessResult(prefixes, documents, tokens, empty, report, np.dtype(dtype).name,
                            time.perf_counter() - progress.start)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="JSONL file, one document per line")
    parser.add_argument("--output-prefix", required=True,
                        help="writes {prefix}_{key}_document.bin/.idx for each --json-keys key")
    parser.add_argument("--tokenizer-model", required=True, help="SentencePiece .model file")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenise")
    parser.add_argument("--append-eod", action="store_true",
                        help="end every document with the end-of-document token (eos id)")
    parser.add_argument("--workers", type=int, default=1, help="tokeniser processes")
    parser.add_argument("--on-bad-line", choices=ON_BAD_LINE_CHOICES, default="fail",
                        help="lines that are not UTF-8 JSON objects with the keys: stop, or skip "
                             "them and report their line numbers")
    parser.add_argument("--log-interval", type=float, default=10.0,
                        help="seconds between progress lines (0: none)")
    return parser.parse_args(argv)


def main(argv: List[str] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = preprocess_jsonl(
        args.input, args.output_prefix, args.tokenizer_model, json_keys=args.json_keys,
        append_eod=args.append_eod, workers=args.workers, on_bad_line=args.on_bad_line,
        log_interval=args.log_interval,
    )
    for key, prefix in result.prefixes.items():
        print(f"[preprocess_data] wrote {prefix}.bin/.idx: {result.documents[key]} documents, "
              f"{result.tokens[key]} tokens ({result.dtype}), {result.empty_documents[key]} empty "
              f"documents dropped, {result.seconds:.1f} s", file=sys.stderr)
    if result.bad_lines.total:
        print(f"[preprocess_data] {result.bad_lines.summary()}", file=sys.stderr)


if __name__ == "__main__":
    main()
