"""Shared pieces of the end-to-end tests: a tiny real dataset and a torchrun launcher."""

import contextlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory):
    """Per-domain .bin/.idx and a tokenizer from the committed fixtures (no network)."""
    from tools.prepare_data import build_fixture_dataset

    out = tmp_path_factory.mktemp("data")
    manifest = build_fixture_dataset(str(out), with_redundant=True)
    return manifest


def data_flags(manifest, valid: bool = True) -> list[str]:
    """The blend of the fixture's training prefixes, its validation prefixes (unless not ``valid``), tokenizer."""
    flags = ["--data-path", *manifest["train_data_path"].split(), "--tokenizer-model", manifest["tokenizer_model"]]
    return [*flags, "--valid-data-path", *manifest["valid_data_path"].split()] if valid else flags


TINY = ["--model", "tiny", "--seq-length", "64", "--max-position-embeddings", "64", "--micro-batch-size", "2",
        "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1"]


def torchrun(script: str, args: list[str], nproc: int = 2, timeout: int = 240, check: bool = True):
    """Run an entry point under torchrun on CPU; returns the CompletedProcess (stdout+stderr).

    On a timeout torchrun and its workers are killed, so a hung run does not keep the two cores
    busy for the tests after it.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", str(_free_port()), str(ROOT / script), *args]
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            stdout, stderr = proc.communicate()
            raise AssertionError(f"{script} timed out after {timeout} s:\n{stdout[-3000:]}\n{stderr[-3000:]}") from None
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}")
    return result


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (torchrun starts its workers in sessions of their own)."""
    import psutil

    root = psutil.Process(pid)
    for proc in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]
