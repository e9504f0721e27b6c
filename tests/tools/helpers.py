"""Helpers shared by the tool tests (``from tests.tools.helpers import ...``; fixtures are in conftest.py)."""

import gzip
import json
import os
import subprocess
import sys

from megatron_patch.launch import ROOT
from tests.helpers.tokenizer_files import fixture_texts  # noqa: F401 - the tool tests' real text

TOOLS = os.path.join(ROOT, "tools")


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return str(path)


def write_corpus(path, records, row_group_size: int = 10) -> str:
    """``records`` in the format ``path``'s name says: .jsonl, .jsonl.gz, .jsonl.zst or .parquet."""
    path = str(path)
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(list(records)), path, row_group_size=row_group_size)
        return path
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    if path.endswith(".gz"):
        data = gzip.compress(data)
    elif path.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor(level=3).compress(data)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def run_python(args, cwd, timeout=300):
    """``python -W ignore ARGS`` in ``cwd`` with one intra-op thread; the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-W", "ignore", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
