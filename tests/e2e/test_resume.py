"""Crashes and interrupted saves on 2-process CPU runs: whatever is killed, the run resumes exactly.

One chain of runs over a single checkpoint directory is killed (SIGKILL, as a node failure) during
a save, after a save's shards but before its marker, and at a random iteration, then finds a
half-written checkpoint directory in its way and trains to the end. Every iteration any run of
the chain logs must equal the uninterrupted ``reference`` run's, bit for bit. Exits on request
(SIGTERM, --exit-duration-in-mins) are tested in test_exits.py.
"""

import os
import random
import shutil
import time
from unittest import mock

from megatron_patch.checkpointing import MARKER, read_marker
from megatron_patch.files import temporary_path
from megatron_patch.logging_utils import read_metrics
from tests.helpers.e2e import TRAIN_ITERS, chain_flags


def _resumed(run, ckpt, iteration: int) -> str:
    return run.wait_for(f"resumed from {ckpt} at iteration {iteration} ")


def test_kills_and_interrupted_saves_resume_exactly(fixture_data, tmp_path, launch, reference):
    ckpt = tmp_path / "ckpt"
    rng = random.Random(9)
    chain = chain_flags(fixture_data, ckpt)
    metrics = [tmp_path / f"chain{n}.jsonl" for n in range(4)]

    # 1. SIGKILL while a checkpoint is being written: the marker never names it.
    run = launch([*chain, "--metrics-file", str(metrics[0])])
    run.wait_for("no checkpoint there yet, starting from iteration 0")
    saving = rng.choice([4, 6])
    run.wait_for(f"saving checkpoint at iteration {saving} ")
    run.kill()
    first = read_marker(str(ckpt))
    assert first in (saving - 2, saving), run.output[-3000:]

    # 2. SIGKILL after a save's shards are complete, before the marker: rank 0 is held exactly
    # there by a FIFO in place of the marker's temporary file (files.temporary_path names it after
    # rank 0's pid), which blocks its open() until the kill.
    run = launch([*chain, "--metrics-file", str(metrics[1])])
    _resumed(run, ckpt, first)
    with mock.patch("os.getpid", return_value=run.worker(0).pid):
        fifo = temporary_path(str(ckpt / MARKER))
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
    os.unlink(fifo)

    # 3. SIGKILL at a random iteration (a node failure): the previous checkpoint loads.
    run = launch([*chain, "--metrics-file", str(metrics[2])])
    _resumed(run, ckpt, second)
    run.wait_for(f"iteration {second + rng.randint(1, 3):8d}/")
    run.kill()
    third = read_marker(str(ckpt))

    # 4. A save killed half way without its .partial suffix: the directory of the next save
    # exists, its shards empty; the marker still names the last complete checkpoint, which is what
    # --load takes, and the next save replaces the damaged directory.
    damaged = ckpt / f"iter_{third + 2:07d}"
    shutil.rmtree(damaged, ignore_errors=True)  # step 3 may have left a complete, unmarked one
    shutil.copytree(ckpt / f"iter_{third:07d}", damaged)
    shards = [name for name in os.listdir(damaged) if name.endswith(".distcp")]
    assert shards
    for name in shards:
        (damaged / name).write_bytes(b"")
    run = launch([*chain, "--metrics-file", str(metrics[3])])
    line = _resumed(run, ckpt, third)
    assert f"({third * 8} samples consumed" in line  # 8 a step
    assert run.finish() == 0, run.output[-3000:]
    assert [r["iteration"] for r in read_metrics(metrics[3], "train")] == list(range(third + 1, TRAIN_ITERS + 1))
    assert read_marker(str(ckpt)) == TRAIN_ITERS
    rewritten = [name for name in os.listdir(damaged) if name.endswith(".distcp")]
    assert rewritten and all((damaged / name).stat().st_size > 0 for name in rewritten)

    # Every iteration logged by any run of the chain, before or after a kill, is the reference's.
    seen = reference.assert_matched_by(metrics)
    assert {("train", i) for i in range(1, TRAIN_ITERS + 1)} <= seen
    assert not list(ckpt.glob("*.partial"))  # killed saves' leftovers were removed by later saves
