"""Tokenise streamed corpus files into megatron-core indexed datasets, in input order, in worker processes.

The engine behind ``tools/preprocess_data.py`` and ``tools/prepare_slimpajama.py``. The main
process reads :class:`~tools.data.corpus_files.Task` chunks and writes the ``.bin``/``.idx``
files; ``workers`` processes parse each line, pick its texts (a :data:`Select` function: which
output dataset each text goes to) and tokenise them with the run's tokenizer
(:func:`megatron_patch.tokenizer.build_tokenizer`, built once per worker from its flags). At most
``IN_FLIGHT_PER_WORKER`` chunks per worker are in flight and results are taken in submission
order, so memory stays flat in the input size and the output does not depend on ``workers``.
"""

import collections
import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

from megatron_patch.errors import one_line
from megatron_patch.files import atomic_outputs
from megatron_patch.tokenizer import build_tokenizer
from tools.data.corpus_files import Task, read_tasks, total_bytes
from tools.data.jsonl_documents import BadLineReport, item_texts

BYTES_PER_TASK = 256 * 1024  # a worker task: consecutive lines up to this many bytes
IN_FLIGHT_PER_WORKER = 4
# record -> ({output name: text}, None) or (None, bad-line reason). Module-level (workers get it pickled).
Select = Callable[[dict], Tuple[Optional[Dict[str, str]], Optional[str]]]
# (line number, bad-line reason or None, {output name: token ids})
Encoded = Tuple[int, Optional[str], Dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class EncodeJob:
    """What a worker needs: the tokenizer's flags, how to pick texts, whether to end documents with EOD."""

    tokenizer: dict  # build_tokenizer keyword arguments
    select: Select
    append_eod: bool = True
    dtype: str = "int32"  # of the ids sent back: the dataset's (encode_corpus sets it), half the bytes of int32


@dataclasses.dataclass
class EncodeResult:
    """Per output: documents, tokens, empty texts dropped; the bad lines; totals and time."""

    documents: Dict[str, int]
    tokens: Dict[str, int]
    empty_documents: Dict[str, int]
    bad_lines: BadLineReport
    dtype: str
    seconds: float
    input_bytes: int


_worker: Optional[tuple] = None  # (tokenizer, job) of this process


def _init_worker(job: EncodeJob, parallel: bool) -> None:
    global _worker
    if parallel:
        # One thread per worker process (the Rust tokenizers would start a pool per process).
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if _worker is None or _worker[1] is not job:  # a forked worker has the parent's tokenizer already
        _worker = (build_tokenizer(**job.tokenizer), job)


def _tokenize_all(tokenizer, texts: List[str]) -> List[object]:
    """Ids of each text, or the exception that text raised (found again one by one after a failed batch)."""
    try:
        return tokenizer.tokenize_batch(texts)
    except Exception:  # noqa: BLE001 - a text the tokenizer refuses (NullTokenizer: not ids) is a bad line
        results = []
        for text in texts:
            try:
                results.append(tokenizer.tokenize(text))
            except Exception as err:  # noqa: BLE001
                results.append(err)
        return results


def encode_task(task: Task) -> Tuple[Task, List[Encoded]]:
    """Parse, select and tokenise one chunk (in a worker, or in-process); the chunk comes back without items."""
    tokenizer, job = _worker
    picked, encoded = [], []
    for offset, item in enumerate(task.items):
        texts, reason = item_texts(item, job.select)
        if texts is None and reason is None:
            continue  # a blank line
        # An empty text is counted, not written (None); the others are tokenised below.
        encoded.append((task.first + offset, reason, {name: None for name, text in (texts or {}).items() if not text}))
        picked += [(len(encoded) - 1, name, text) for name, text in (texts or {}).items() if text]
    eod = np.array([tokenizer.eod] if job.append_eod else [], dtype=job.dtype)
    for (index, name, _), ids in zip(picked, _tokenize_all(tokenizer, [text for _, _, text in picked])):
        number, reason, outputs = encoded[index]
        if isinstance(ids, Exception):
            encoded[index] = (number, f"cannot be tokenized ({one_line(ids, 80)})", {})
        elif reason is None:
            outputs[name] = np.concatenate([np.asarray(ids, dtype=job.dtype), eod])  # ids < vocab: they fit
    return dataclasses.replace(task, items=[]), encoded


def _encoded_tasks(tasks, job: EncodeJob, workers: int, tokenizer=None):
    """The results of :func:`encode_task` over ``tasks``, in input order, with bounded memory.

    ``tokenizer``, built from ``job.tokenizer`` already, serves this process and the forked workers
    (loading a Hugging Face tokenizer takes seconds); without it, or under spawn, each builds its own.
    """
    global _worker
    _worker = None if tokenizer is None else (tokenizer, job)
    if workers <= 1:
        _init_worker(job, parallel=False)
        yield from map(encode_task, tasks)
        return
    # fork keeps worker start-up cheap (no re-import of torch and the tokenizer libraries).
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers, initializer=_init_worker, initargs=(job, True)) as pool:
        pending = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(encode_task, (task,)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class Progress:
    """A line on stderr every ``interval`` seconds: share of the input, documents, tokens/s, ETA."""

    def __init__(self, label: str, total: int, interval: float) -> None:
        self.label, self.total, self.interval = label, max(total, 1), interval
        self.done = self.documents = self.tokens = 0
        self.start = self.last = time.perf_counter()

    def update(self, done_bytes: int, documents: int, tokens: int) -> None:
        self.done, self.documents, self.tokens = done_bytes, self.documents + documents, self.tokens + tokens
        now = time.perf_counter()
        if self.interval > 0 and now - self.last >= self.interval:
            self.last, elapsed = now, now - self.start
            eta = elapsed * (self.total - self.done) / max(self.done, 1)
            print(f"[{self.label}] {100 * self.done / self.total:5.1f}% of {self.total / 1e6:.1f} MB, "
                  f"{self.documents} documents, {self.tokens} tokens, {self.tokens / elapsed:,.0f} tokens/s, "
                  f"{self.done / 1e6 / elapsed:.1f} MB/s, ETA {eta:.0f} s", file=sys.stderr, flush=True)


def encode_corpus(paths: Sequence[str], outputs: Dict[str, str], job: EncodeJob, *, vocab_size: int,
                  columns: Sequence[str], workers: int = 1, on_bad_line: str = "fail", log_interval: float = 10.0,
                  label: str = "preprocess_data", tokenizer=None) -> EncodeResult:
    """Tokenise ``paths`` into one indexed dataset per output (``{name: prefix}``), atomically.

    Every output's ``.bin``/``.idx`` appear under their final names only when all are complete
    (each ``.idx`` last). Bad lines stop the run (``on_bad_line="fail"``, :class:`BadLineError`
    naming ``file:line``) or are skipped and counted. ``tokenizer``: ``job.tokenizer``'s, if built already.
    """
    dtype = DType.optimal_dtype(vocab_size)
    job = dataclasses.replace(job, dtype=np.dtype(dtype).name)
    report = BadLineReport(paths[0] if len(paths) == 1 else f"{len(paths)} input files")
    documents = {name: 0 for name in outputs}
    tokens, empty = dict(documents), dict(documents)
    progress = Progress(label, total_bytes(paths), log_interval)
    final = [outputs[name] + ext for ext in (".bin", ".idx") for name in outputs]  # every .idx after the .bins
    with atomic_outputs(*final) as temporary:
        paths_of = dict(zip(final, temporary))
        builders = {name: IndexedDatasetBuilder(paths_of[outputs[name] + ".bin"], dtype=dtype) for name in outputs}
        results = _encoded_tasks(read_tasks(paths, columns, BYTES_PER_TASK), job, workers, tokenizer)
        try:
            with contextlib.closing(results):
                for task, encoded in results:
                    new_documents = new_tokens = 0
                    for number, reason, per_output in encoded:
                        if reason is not None:
                            report.add(number, reason, on_bad_line, path=task.path)
                            continue
                        new_documents += 1
                        for name, ids in per_output.items():
                            if ids is None:
                                empty[name] += 1
                                continue
                            builders[name].add_document(ids, [ids.size])
                            documents[name] += 1
                            tokens[name] += ids.size
                            new_tokens += ids.size
                    progress.update(task.done_bytes, new_documents, new_tokens)
        finally:
            for builder in builders.values():
                builder.data_file.close()
        for name in outputs:
            builders[name].finalize(paths_of[outputs[name] + ".idx"])
    return EncodeResult(documents, tokens, empty, report, np.dtype(dtype).name,
                        time.perf_counter() - progress.start, progress.total)
