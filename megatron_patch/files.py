"""Atomic file writes: under a temporary name in the same directory, then ``os.replace``.

A crash (exception, kill, power loss) before the commit leaves nothing under the final names but
possibly ``*.tmp-<pid>`` leftovers, which the next run overwrites or which can be deleted. Used by
the checkpoints, the run record, the data tools and the reports.
"""

import contextlib
import json
import os
from typing import Iterator, List


def temporary_path(final_path: str) -> str:
    """The temporary name used for ``final_path``: same directory, so ``os.replace`` is atomic."""
    return f"{final_path}.tmp-{os.getpid()}"


@contextlib.contextmanager
def atomic_outputs(*final_paths: str) -> Iterator[List[str]]:
    """Yield one temporary path per final path; move them into place only if the block succeeds.

    On success, stale copies of *all* final paths are removed first and the files are then moved
    into place in the order given, so a crash during the commit leaves each final path either
    absent or complete and new, never a new file beside an old one. Give the file that readers
    check for last (for an indexed dataset the ``.idx`` after the ``.bin``). On an exception the
    temporary files are deleted and the exception propagates.
    """
    for path in final_paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = [temporary_path(path) for path in final_paths]
    try:
        yield temporary
    except BaseException:
        for path in temporary:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        raise
    for path in final_paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    for source, target in zip(temporary, final_paths):
        os.replace(source, target)


def write_atomically(path: str, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` through a temporary file (fsynced) and ``os.replace``."""
    with atomic_outputs(path) as (temporary,):
        with open(temporary, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomically(path: str, value, **dump_kwargs) -> None:
    """``json.dumps(value)`` written atomically (``default=str`` unless given)."""
    dump_kwargs.setdefault("default", str)
    write_atomically(path, json.dumps(value, **dump_kwargs))
