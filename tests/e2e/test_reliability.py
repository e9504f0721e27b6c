"""Faults on 2-process CPU runs: crashes, interrupted saves, preemption, early exits, non-finite losses.

One uninterrupted reference run and, beside it, one chain of runs over a single checkpoint
directory that is killed and resumed again and again; every iteration any run of the chain logs
must equal the reference's, bit for bit.
"""

import collections
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

from e2e_support import ROOT, TINY, _free_port, data_flags, kill_tree
from megatron_patch.checkpointing import MARKER, read_marker

TRAIN_ITERS = 12
# Timing and the health annotation are not training state; everything else must match exactly.
NOT_COMPARED = {"ms_per_iter", "tokens_per_s", "weight_collapse"}


def _flags(fixture_data) -> list[str]:
    return [*TINY, *data_flags(fixture_data), "--global-batch-size", "8", "--train-iters", str(TRAIN_ITERS),
            "--lr-warmup-iters", "2", "--reweight-strategy", "linupper", "--reweight-r", "0.5",
            "--reweight-warmup-iters", "2"]


class Run:
    """A torchrun launch whose output lines are read as they come (merged stdout and stderr)."""

    def __init__(self, args: list[str], **env):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **env)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(_free_port()), str(ROOT / "pretrain_llama.py"), *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines, self._queue = [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 180) -> str:
        """Read lines until one contains ``text``; returns it."""
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

    def worker(self, rank: int) -> psutil.Process:
        return next(p for p in psutil.Process(self.proc.pid).children() if p.environ().get("RANK") == str(rank))

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def launch():
    """``launch(args, **env)`` starts a :class:`Run`; runs a failed test left running are killed."""
    runs = []

    def start(args, **env):
        runs.append(Run(args, **env))
        return runs[-1]

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.kill()


def _records(path) -> dict:
    """``{(kind, iteration): record}`` of a metrics file; a line cut by SIGKILL is dropped."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                record = json.loads(line)
                out[(record["kind"], record["iteration"])] = {k: v for k, v in record.items() if k not in NOT_COMPARED}
    return out


def _resumed(run: Run, ckpt, iteration: int) -> None:
    run.wait_for(f"resumed from {ckpt} at iteration {iteration} ")


def test_kills_saves_and_preemption_resume_exactly(fixture_data, tmp_path, launch):
    flags = _flags(fixture_data)
    # Alongside the chain's first run: on shared cores, two runs at once finish sooner than in turn.
    reference_run = launch([*flags, "--metrics-file", str(tmp_path / "reference.jsonl")])

    ckpt = tmp_path / "ckpt"
    rng = random.Random(9)
    chain = [*flags, "--save", str(ckpt), "--load", str(ckpt), "--save-interval", "2", "--exit-signal-handler"]
    metrics = [tmp_path / f"chain{n}.jsonl" for n in range(5)]

    # 1. SIGKILL while a checkpoint is being written: the marker never names it.
    run = launch([*chain, "--metrics-file", str(metrics[0])])
    run.wait_for("no checkpoint there yet, starting from iteration 0")
    saving = rng.choice([4, 6])
    run.wait_for(f"saving checkpoint at iteration {saving} ")
    run.kill()
    first = read_marker(str(ckpt))
    assert first in (saving - 2, saving), run.output[-3000:]

    # 2. SIGKILL after a save's shards are complete, before the marker: rank 0 is held exactly
    # there by a FIFO in place of the marker's temporary file (checkpointing._write_atomically
    # names it MARKER.tmp.<pid>), which blocks its open() until the kill.
    run = launch([*chain, "--metrics-file", str(metrics[1])])
    _resumed(run, ckpt, first)
    fifo = ckpt / f"{MARKER}.tmp.{run.worker(0).pid}"
    os.mkfifo(fifo)
    held = ckpt / f"iter_{first + 2:07d}"  # the first save after the resume
    run.wait_for(f"saving checkpoint at iteration {first + 2} ")
    deadline = time.time() + 120
    # Renamed from .partial (an iter_ directory that step 1 left unmarked is replaced only then).
    while not held.is_dir() or os.path.exists(f"{held}.partial"):
        assert time.time() < deadline and run.proc.poll() is None, run.output[-3000:]
        time.sleep(0.2)
    run.kill()
    second = read_marker(str(ckpt))
    assert second == first and {p.name for p in (held / "rng").iterdir()} == {"rank_00000.pt", "rank_00001.pt"}
    fifo.unlink()

    # 3. SIGKILL at a random iteration (a node failure): the previous checkpoint loads.
    run = launch([*chain, "--metrics-file", str(metrics[2])])
    _resumed(run, ckpt, second)
    run.wait_for(f"iteration {second + rng.randint(1, 3):8d}/")
    run.kill()
    third = read_marker(str(ckpt))

    # 4. SIGTERM to torchrun (what scancel or a preemption sends): torchrun passes it to the
    # training processes, which save at the end of the iteration and exit 0 within torchrun's
    # grace period; torchrun itself then exits 1 (it re-raises the signal). See docs/errors.md.
    run = launch([*chain, "--metrics-file", str(metrics[3])], TORCH_ELASTIC_SHUTDOWN_TIMEOUT="120")
    _resumed(run, ckpt, third)
    run.wait_for(f"iteration {third + 1:8d}/")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 1
    fourth = read_marker(str(ckpt))
    assert f"exiting after iteration {fourth}: received SIGTERM (--exit-signal-handler)" in run.output
    assert f"saved checkpoint at iteration {fourth}" in run.output and "forcefully exiting" not in run.output

    # 5. --exit-duration-in-mins: saves and exits 0 after the first iteration past the limit.
    run = launch([*chain, "--metrics-file", str(metrics[4]), "--exit-duration-in-mins", "0"])
    _resumed(run, ckpt, fourth)
    assert run.finish() == 0, run.output[-3000:]
    assert f"exiting after iteration {fourth + 1}: ran " in run.output
    assert read_marker(str(ckpt)) == fourth + 1

    assert reference_run.finish() == 0, reference_run.output[-3000:]
    reference = _records(tmp_path / "reference.jsonl")
    assert sorted(i for kind, i in reference if kind == "train") == list(range(1, TRAIN_ITERS + 1))
    # Every iteration logged by any run of the chain, before or after a kill, is the reference's.
    seen = set()
    for path in metrics:
        for key, record in _records(path).items():
            assert record == reference[key], (path.name, key)
            seen.add(key)
    assert {("train", i) for i in range(1, fourth + 2)} <= seen
    assert not list(ckpt.glob("*.partial"))  # killed saves' leftovers were removed by later saves


def nonfinite_in_rank(metrics_file: str) -> dict:
    """Train 6 steps through the real loop with NaN/Inf injected into chosen samples' losses.

    Each step has 2 micro-batches of 2 samples per rank (groups of 4). ``loss`` injection replaces
    the per-token losses (their gradient path stays finite, as for a loss that overflows on its
    own); ``model`` injection multiplies them by NaN, as when the model's activations are NaN:
    backward then carries NaN whatever the sample's weight.
    """
    import pretrain_gpt
    from megatron.core import parallel_state as ps

    from megatron_patch import checkpointing, training
    from megatron_patch.distributed import set_seeds

    os.environ["WORLD_SIZE"] = "2"
    args, reweight, health, tokenizer = training.resolve_args(
        ["--model", "tiny", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "512",
         "--seq-length", "32", "--max-position-embeddings", "32", "--micro-batch-size", "2",
         "--global-batch-size", "8", "--train-iters", "6", "--log-interval", "1", "--eval-interval", "1000",
         "--reweight-strategy", "linupper", "--reweight-warmup-iters", "1", "--metrics-file", metrics_file], "llama")
    set_seeds(args.seed)
    model, optimizer, scheduler = training.build_model_and_optimizer(pretrain_gpt.model_provider, args)
    data = pretrain_gpt.datasets_provider(args, tokenizer)
    state = checkpointing.LoopState(layout=dict(dp=2, tp=1, pp=1, cp=1))
    # (step, micro-batch) -> (injection, which samples): "rank0" is the first sample of rank 0.
    plan = {(0, 0): ("model", "rank0"),  # uniform warm-up: the step's loss and gradients are NaN
            (1, 0): ("loss", "rank0"),   # weight 0, the other samples train
            (2, 0): ("loss", "all"),     # a whole group without a finite loss; the other group trains
            (3, 0): ("loss", "all"), (3, 1): ("loss", "all"),  # nothing finite in the step
            (4, 1): ("loss-inf", "rank0"),
            (5, 0): ("model", "rank0")}  # weight 0 cannot stop NaN activations' gradients
    calls, params = collections.Counter(), []

    def forward_step(data_iterator, chunk, step):
        micro = calls[step.iteration]
        calls[step.iteration] += 1
        if micro == 0 and chunk.training:  # not for the final evaluation's forward steps
            params.append(torch.cat([p.detach().flatten().clone() for p in chunk.parameters()]))
        output, loss_func = pretrain_gpt.forward_step(data_iterator, chunk, step)
        kind, who = plan.get((step.iteration, micro), (None, None))
        bad = torch.zeros_like(output, dtype=torch.bool)
        if who == "all" or (who == "rank0" and ps.get_data_parallel_rank() == 0):
            bad[0 if who == "rank0" else slice(None)] = True
        if kind == "model":
            output = output * torch.where(bad, math.nan, 1.0)
        elif kind is not None:
            output = torch.where(bad, math.inf if kind == "loss-inf" else math.nan, output)
        return output, loss_func

    training.train(forward_step, model, optimizer, scheduler, data, args, state, reweight, health)
    params.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
    return {"skipped": state.skipped_iterations, "finite": bool(torch.isfinite(params[-1]).all()),
            "updated": [not torch.equal(a, b) for a, b in zip(params, params[1:])]}


def test_nonfinite_losses(run_distributed, tmp_path):
    results = run_distributed(nonfinite_in_rank, world_size=2, metrics_file=str(tmp_path / "m.jsonl"))
    updated = [False, True, True, False, True, False]
    for out in results:
        assert out == {"skipped": 3, "finite": True, "updated": updated}
    train = [json.loads(line) for line in open(tmp_path / "m.jsonl")]
    train = [r for r in train if r["kind"] == "train"]
    assert [r["nonfinite"] for r in train] == [1, 1, 4, 8, 1, 1]
    assert [r["skipped"] for r in train] == [int(not u) for u in updated]
    assert [r["nan_iterations"] for r in train] == [1, 0, 0, 0, 0, 1]
    assert [r["reweight r"] for r in train] == [None, 1.0, 1.0, 1.0, 1.0, 1.0]
    norms = [r["grad_norm"] for r in train]  # the metrics file writes non-finite numbers as null
    assert norms[0] is None and norms[5] is None and norms[3] == 0.0
    assert all(math.isfinite(n) and n > 0 for n in (norms[1], norms[2], norms[4]))
    # The unweighted lm loss shows a NaN sample; the weighted loss leaves it out.
    assert train[1]["lm loss"] is None and math.isfinite(train[1]["weighted loss"])
