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


def fake_training_runs(ms: dict, variant_flag: str):
    """A stand-in for ``run_torchrun`` in the two-run benchmarks: ``(run, calls)``.

    Each call of ``run`` writes the metrics file its flags name, whose steady step time is the
    next value of ``ms[variant]`` (the variant is the value of ``variant_flag``; the first logged
    step is slow, as start-up is), and records ``(script, {flag: value}, nproc)`` in ``calls``.
    """
    calls = []

    def run(target, nproc):
        flags = target[1:]
        values = {f: flags[i + 1] for i, f in enumerate(flags[:-1]) if f.startswith("--")}
        calls.append((target[0], values, nproc))
        value = next(ms[values[variant_flag]])
        rows = [{"kind": "train", "iteration": i, "ms_per_iter": 5 * value if i == 1 else value} for i in (1, 2, 3)]
        with open(values["--metrics-file"], "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in [*rows, {"kind": "valid", "iteration": 3, "loss": 1.0}])

    return run, calls
