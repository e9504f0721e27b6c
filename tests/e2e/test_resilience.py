"""Preemption and interrupted saves: SIGTERM saves and exits 0; a half-written checkpoint is never loaded."""

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil

from e2e_support import ROOT, _free_port, kill_tree, read_metrics, torchrun

MOCK = ["--model", "tiny", "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "512",
        "--seq-length", "64", "--max-position-embeddings", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1"]


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(ROOT / "pretrain_llama.py"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 180) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    kill_tree(proc.pid)
    raise AssertionError(f"{text!r} not seen:\n{''.join(lines[-40:])}")


def test_sigterm_saves_then_half_written_checkpoint_is_skipped(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    flags = [*MOCK, "--save", str(ckpt), "--load", str(ckpt), "--exit-signal-handler",
             "--metrics-file", str(tmp_path / "m.jsonl")]
    proc = _start([*flags, "--train-iters", "1000"])
    lines = _wait_for(proc, "iteration        3/")
    assert any("no checkpoint there yet, starting from iteration 0" in line for line in lines)
    # Slurm signals every task of the step: here, both training processes (torchrun's children).
    for child in psutil.Process(proc.pid).children():
        child.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest[-3000:]
    stopped = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert stopped >= 3 and f"exiting after iteration {stopped}: received SIGTERM" in rest
    assert (ckpt / f"iter_{stopped:07d}").is_dir()

    # A save killed half way: the directory of the next iteration exists, incomplete; the marker
    # still names the last complete one, which is what --load takes.
    partial = ckpt / f"iter_{stopped + 1:07d}"
    shutil.copytree(ckpt / f"iter_{stopped:07d}", partial)
    for name in os.listdir(partial):
        if name.endswith(".distcp"):
            (partial / name).write_bytes(b"")
    out = torchrun("pretrain_llama.py", [*flags, "--train-iters", str(stopped + 2), "--save-interval", "1"])
    assert f"resumed from {ckpt} at iteration {stopped} ({stopped * 4} samples consumed" in out.stdout
    train = [r for r in read_metrics(tmp_path / "m.jsonl") if r["kind"] == "train"]
    assert [r["iteration"] for r in train][-2:] == [stopped + 1, stopped + 2]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == str(stopped + 2)
    assert all((partial / name).stat().st_size > 0 for name in os.listdir(partial) if name.endswith(".distcp"))
