"""Shared pieces of the end-to-end tests: a tiny real dataset, the tiny-model flags, and torchrun
launches of the entry points built on :mod:`megatron_patch.launch` (the launcher the tools use).

The ``fixture_data`` fixture of tests/e2e/conftest.py hands out :func:`build_fixture_data`'s
manifest; metrics files are read with :func:`megatron_patch.logging_utils.read_metrics`.
"""

import json
import queue
import subprocess
import threading
import time

import psutil

from megatron_patch.launch import ROOT, kill_tree, launch_env, run_torchrun, torchrun_command

TINY = ["--model", "tiny", "--seq-length", "64", "--max-position-embeddings", "64", "--micro-batch-size", "2",
        "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1"]


def build_fixture_data(out_dir: str) -> dict:
    """Per-domain .bin/.idx and a tokenizer from the committed fixtures (no network); the manifest."""
    from tools.prepare_data import build_fixture_dataset

    return build_fixture_dataset(str(out_dir), with_redundant=True)


def data_flags(manifest, valid: bool = True) -> list[str]:
    """The blend of the fixture's training prefixes, its validation prefixes (unless not ``valid``), tokenizer."""
    flags = ["--data-path", *manifest["train_data_path"].split(), "--tokenizer-model", manifest["tokenizer_model"]]
    return [*flags, "--valid-data-path", *manifest["valid_data_path"].split()] if valid else flags


def torchrun(script: str, args: list[str], nproc: int = 2, timeout: int = 240,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run an entry point (a path relative to the repository) under torchrun on CPU, to the end.

    :func:`megatron_patch.launch.run_torchrun`: a hung run is killed with its workers after
    ``timeout`` seconds (``TimeoutError``); with ``check`` a failed run raises ``RuntimeError``
    with the tail of its output.
    """
    return run_torchrun([script, *args], nproc, timeout=timeout, check=check)


class Run:
    """A 2-process torchrun launch of ``pretrain_llama.py`` whose merged stdout and stderr lines are
    read as they come, to act on a run while it trains (signals, kills)."""

    def __init__(self, args: list[str], **env: str):
        self.proc = subprocess.Popen(torchrun_command(["pretrain_llama.py", *args], 2), cwd=ROOT,
                                     env=launch_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines, self._queue = [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 180) -> str:
        """Read lines until one contains ``text``; returns it. Kills the run if it never comes."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        self.kill()
        raise AssertionError(f"{text!r} not seen:\n{self.output[-4000:]}")

    def finish(self, timeout: float = 180) -> int:
        """Wait for the exit; returns the status."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s:\n{self.output[-4000:]}") from None
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        return self.proc.returncode

    def kill(self):
        """SIGKILL torchrun and everything under it, as a node failure would. Killing torchrun's
        process group is not enough: it starts each worker in a session of its own."""
        kill_tree(self.proc.pid)
        self.proc.wait()

    def workers(self) -> list[psutil.Process]:
        """The training processes (torchrun's children), by rank."""
        children = [p for p in psutil.Process(self.proc.pid).children() if "RANK" in p.environ()]
        return sorted(children, key=lambda p: int(p.environ()["RANK"]))

    def worker(self, rank: int) -> psutil.Process:
        return self.workers()[rank]

    @property
    def output(self) -> str:
        return "".join(self.lines)


def complete_records(path, drop=()) -> dict:
    """``{(kind, iteration): record}`` of a metrics file without the keys ``drop``; a last line cut by
    SIGKILL (no newline yet) is left out."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                record = json.loads(line)
                out[(record["kind"], record["iteration"])] = {k: v for k, v in record.items() if k not in drop}
    return out


# The interrupted-run tests (tests/e2e/test_resume.py, test_exits.py): chains of runs over one
# checkpoint directory, each iteration any of them logs compared with one uninterrupted run.
TRAIN_ITERS = 12
# Timing and the health annotation are not training state; everything else must match exactly.
NOT_COMPARED = {"ms_per_iter", "tokens_per_s", "weight_collapse"}


def interrupted_flags(manifest) -> list[str]:
    """The 12-iteration linupper configuration of the interrupted-run tests (4 data-parallel micro-batches a step)."""
    return [*TINY, *data_flags(manifest), "--global-batch-size", "8", "--train-iters", str(TRAIN_ITERS),
            "--lr-warmup-iters", "2", "--reweight-strategy", "linupper", "--reweight-r", "0.5",
            "--reweight-warmup-iters", "2"]


def chain_flags(manifest, ckpt) -> list[str]:
    """:func:`interrupted_flags` of a run that resumes from and saves to ``ckpt``, stopping on SIGTERM."""
    return [*interrupted_flags(manifest), "--save", str(ckpt), "--load", str(ckpt), "--save-interval", "2",
            "--exit-signal-handler"]


class Reference:
    """The uninterrupted run of :func:`interrupted_flags`, started at once and waited for only when
    its records are asked for: on shared cores it trains beside a chain sooner than before it."""

    def __init__(self, manifest, out_dir):
        self.metrics = out_dir / "reference.jsonl"
        self.run = Run([*interrupted_flags(manifest), "--metrics-file", str(self.metrics)])
        self._records = None

    def records(self) -> dict:
        """``{(kind, iteration): record}`` without :data:`NOT_COMPARED`, after the run's exit 0."""
        if self._records is None:
            assert self.run.finish(timeout=600) == 0, self.run.output[-3000:]
            self._records = complete_records(self.metrics, NOT_COMPARED)
            assert sorted(i for kind, i in self._records if kind == "train") == list(range(1, TRAIN_ITERS + 1))
        return self._records

    def stop(self):
        if self.run.proc.poll() is None:
            self.run.kill()

    def assert_matched_by(self, metrics_files) -> set:
        """Every record any of ``metrics_files`` holds equals the reference's, bit for bit; returns their keys."""
        reference, seen = self.records(), set()
        for path in metrics_files:
            for key, record in complete_records(path, NOT_COMPARED).items():
                assert record == reference[key], (path.name, key)
                seen.add(key)
        return seen
