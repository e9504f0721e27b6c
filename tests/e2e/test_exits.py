"""Exits on request on 2-process CPU runs: SIGTERM and --exit-duration-in-mins save and stop.

One chain of runs over a single checkpoint directory: SIGTERM to every training process (what
Slurm sends to each task of a step) saves and exits 0; SIGTERM to torchrun (what scancel or a
preemption sends to the launcher) saves within torchrun's grace period; --exit-duration-in-mins
saves and exits 0. Every iteration any run logs equals the uninterrupted ``reference`` run's, bit
for bit. Crashes and interrupted saves are tested in test_resume.py.
"""

import signal

from megatron_patch.checkpointing import read_marker
from tests.helpers.e2e import chain_flags


def test_sigterm_and_duration_limit_save_and_resume_exactly(fixture_data, tmp_path, launch, reference):
    ckpt = tmp_path / "ckpt"
    chain = chain_flags(fixture_data, ckpt)
    metrics = [tmp_path / f"chain{n}.jsonl" for n in range(3)]

    # 1. SIGTERM to each training process (torchrun's children), as Slurm signals every task:
    # all ranks agree at the end of the iteration, save, and exit 0, so torchrun exits 0.
    run = launch([*chain, "--metrics-file", str(metrics[0])])
    run.wait_for("no checkpoint there yet, starting from iteration 0")
    run.wait_for(f"iteration {3:8d}/")
    for worker in run.workers():
        worker.send_signal(signal.SIGTERM)
    assert run.finish(timeout=120) == 0, run.output[-3000:]
    stopped = read_marker(str(ckpt))
    assert stopped >= 3 and f"exiting after iteration {stopped}: received SIGTERM" in run.output
    assert f"saved checkpoint at iteration {stopped}" in run.output
    assert (ckpt / f"iter_{stopped:07d}").is_dir()

    # 2. SIGTERM to torchrun (what scancel or a preemption sends): torchrun passes it to the
    # training processes, which save at the end of the iteration and exit 0 within torchrun's
    # grace period; torchrun itself then exits 1 (it re-raises the signal). See docs/errors.md.
    run = launch([*chain, "--metrics-file", str(metrics[1])], TORCH_ELASTIC_SHUTDOWN_TIMEOUT="120")
    run.wait_for(f"resumed from {ckpt} at iteration {stopped} ")
    run.wait_for(f"iteration {stopped + 1:8d}/")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 1
    second = read_marker(str(ckpt))
    assert f"exiting after iteration {second}: received SIGTERM (--exit-signal-handler)" in run.output
    assert f"saved checkpoint at iteration {second}" in run.output and "forcefully exiting" not in run.output

    # 3. --exit-duration-in-mins: saves and exits 0 after the first iteration past the limit
    # (6 ms, less than any iteration takes; the flag must be > 0).
    run = launch([*chain, "--metrics-file", str(metrics[2]), "--exit-duration-in-mins", "0.0001"])
    run.wait_for(f"resumed from {ckpt} at iteration {second} ")
    assert run.finish() == 0, run.output[-3000:]
    assert f"exiting after iteration {second + 1}: ran " in run.output
    assert read_marker(str(ckpt)) == second + 1

    # Stopping on request changes nothing in the training: every logged iteration is the reference's.
    seen = reference.assert_matched_by(metrics)
    assert {("train", i) for i in range(1, second + 2)} <= seen
