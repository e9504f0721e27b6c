"""Helpers shared by the tool tests (``from tests.tools.helpers import ...``; fixtures are in conftest.py)."""

import json
import os
import subprocess
import sys

from megatron_patch.launch import ROOT
from tools.data.fixtures import read_fixture

TOOLS = os.path.join(ROOT, "tools")


def fixture_texts():
    """The texts of the committed books, speeches and code fixtures, in file order."""
    return [d.text for name in ("books", "speeches", "code") for d in read_fixture(name)]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return str(path)


def run_python(args, cwd, timeout=300):
    """``python -W ignore ARGS`` in ``cwd`` with one intra-op thread; the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-W", "ignore", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
