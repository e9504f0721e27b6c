"""Corpus files as they are distributed: ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` and ``.parquet``, streamed.

:func:`expand_inputs` turns files, globs and directories into the list of files, in the order
given (glob matches and directory contents sorted by path). :func:`read_tasks` streams them as
:class:`Task` chunks of about ``bytes_per_task`` bytes: raw lines of JSONL (parsed by the workers)
or row dicts of Parquet (``columns`` only, one row group at a time), so memory does not grow with
the input; :func:`iter_texts` parses them in this process (the readers that need no workers). A
file that is not what its name says is one :class:`ArgumentError` line.
"""

import dataclasses
import functools
import glob
import gzip
import io
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from megatron_patch.errors import ArgumentError, one_line, require_module
from tools.data.jsonl_documents import BadLineReport, item_texts, select_texts

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet")
ROWS_PER_BATCH = 1024  # Parquet rows read at a time


@dataclasses.dataclass
class Task:
    """A chunk of one file: ``items`` are raw JSONL lines (bytes) or Parquet rows (dicts)."""

    path: str
    first: int  # 1-based line (or row) number of items[0]
    items: list
    done_bytes: int  # on-disk bytes of all inputs consumed once this task is done (for progress)


def _format(path: str) -> Optional[str]:
    return next((s for s in SUFFIXES if path.endswith(s)), None)


def expand_inputs(patterns: Sequence[str], flag: str = "--input") -> List[str]:
    """Files, globs and directories -> the input files, in order; each file once."""
    files: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(os.path.join(d, f) for d, _, names in os.walk(pattern) for f in names if _format(f))
            what = "holds no"
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            what = "matches no"
        elif os.path.isfile(pattern):
            found, what = [pattern], ""
        else:
            raise ArgumentError(f"{flag} {pattern}: no such file or directory")
        if not found:
            raise ArgumentError(f"{flag} {pattern}: {what} file; pass {', '.join(SUFFIXES)} files, globs or directories")
        for path in found:
            if _format(path) is None:
                raise ArgumentError(f"{flag} {path}: unknown format; the inputs are {', '.join(SUFFIXES)} files")
            if path in files:
                raise ArgumentError(f"{flag}: {path} is given twice; each document would be read twice")
            files.append(path)
    return files


def _open_lines(path: str, raw):
    """A line iterator over the decompressed content of the open file ``raw``."""
    kind = _format(path)
    if kind == ".jsonl.gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == ".jsonl.zst":
        zstandard = require_module("zstandard", f"--input {path}")
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
        return io.BufferedReader(reader, buffer_size=1 << 20)
    return raw


def _jsonl_tasks(path: str, offset: int, bytes_per_task: int) -> Iterator[Task]:
    with open(path, "rb") as raw:
        lines = _open_lines(path, raw)
        first, batch, size = 1, [], 0
        for line in lines:
            batch.append(line)
            size += len(line)
            if size >= bytes_per_task:
                yield Task(path, first, batch, offset + raw.tell())
                first, batch, size = first + len(batch), [], 0
        yield Task(path, first, batch, offset + os.path.getsize(path))  # the rest (maybe none): the file is done


def _parquet_tasks(path: str, columns: Sequence[str], offset: int, bytes_per_task: int) -> Iterator[Task]:
    require_module("pyarrow", f"--input {path}")
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ArgumentError(f"--input {path}: has no column {', '.join(missing)} (its columns: {', '.join(names)}); "
                            "name the text column with --json-keys")
    total_rows, size = max(parquet.metadata.num_rows, 1), os.path.getsize(path)
    first, batch, batch_bytes = 1, [], 0
    for record_batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, columns=list(columns)):
        rows = record_batch.to_pylist()
        batch += rows
        batch_bytes += record_batch.nbytes
        if batch_bytes >= bytes_per_task:
            done = first - 1 + len(batch)
            yield Task(path, first, batch, offset + size * done // total_rows)
            first, batch, batch_bytes = first + len(batch), [], 0
    yield Task(path, first, batch, offset + size)


def read_tasks(paths: Sequence[str], columns: Sequence[str], bytes_per_task: int) -> Iterator[Task]:
    """The chunks of every file in order; ``columns`` are the Parquet columns to read."""
    offset = 0
    for path in paths:
        try:
            if path.endswith(".parquet"):
                yield from _parquet_tasks(path, columns, offset, bytes_per_task)
            else:
                yield from _jsonl_tasks(path, offset, bytes_per_task)
        except ArgumentError:
            raise
        except Exception as err:  # noqa: BLE001 - gzip, zstandard and pyarrow each raise their own kinds
            raise ArgumentError(f"--input {path}: cannot be read as {_format(path)} ({one_line(err, 120)}); "
                                "check the file (truncated or mis-named?)") from None
        offset += os.path.getsize(path)


def iter_texts(paths: Sequence[str], keys: Sequence[str], report: BadLineReport, on_bad_line: str = "fail",
               bytes_per_task: int = 1 << 20) -> Iterator[Tuple[str, int, Dict[str, str]]]:
    """``(path, line or row number, {key: text})`` of each good line or row of ``paths``, in order.

    Read as :func:`read_tasks` reads them (every format, streamed); bad lines go to ``report``
    (:class:`~tools.data.jsonl_documents.BadLineError` on the first unless ``on_bad_line="skip"``).
    """
    select = functools.partial(select_texts, keys=keys)
    for task in read_tasks(paths, keys, bytes_per_task):
        for number, item in enumerate(task.items, start=task.first):
            texts, reason = item_texts(item, select)
            if reason is not None:
                report.add(number, reason, on_bad_line, path=task.path)
            elif texts is not None:
                yield task.path, number, texts


def total_bytes(paths: Sequence[str]) -> int:
    """The inputs' size on disk (the progress line's 100%)."""
    return sum(os.path.getsize(p) for p in paths)
