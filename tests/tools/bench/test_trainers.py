"""tools/bench/trainers.py: the driver's ABBA order and figure (fake runs), and its outside timing of a run."""

import sys

import pytest

from tools.bench import trainers


def test_bench_trainers_ratio_and_order(monkeypatch, capsys):
    ms = {"megatron-core": iter([100.0, 102.0, 98.0]), "megatron-lm": iter([99.0, 100.0, 100.0])}
    calls = []

    def fake(flags, skip_iters, train_iters, nproc):
        trainer = flags[flags.index("--trainer") + 1]
        calls.append((trainer, flags[flags.index("--train-iters") + 1], skip_iters, nproc))
        return next(ms[trainer])

    monkeypatch.setattr(trainers, "steady_ms_per_iter", fake)
    ratio = trainers.main(["--rounds", "3", "--train-iters", "30", "--skip-iters", "5"])
    assert [c[0] for c in calls] == ["megatron-core", "megatron-lm", "megatron-lm", "megatron-core",
                                     "megatron-core", "megatron-lm"]
    assert all(c[1:] == ("30", 5, 2) for c in calls)
    # steps/s ratios ours / megatron-lm = 99/100, 100/102, 100/98: median 0.99
    assert ratio == pytest.approx(0.99)
    assert "of 3 rounds): 0.99 [0.9804, 1.02]; target >= 0.97: met" in capsys.readouterr().out


def fake_run(script: str):
    return lambda target, nproc: [sys.executable, "-c", script]


def test_steps_are_timed_between_the_iteration_lines(monkeypatch):
    """Wall time between the lines of iterations 2 and 4 over 2 steps: at least the 0.2 s slept per step."""
    script = ("import time\nfor i in range(1, 5):\n    print(f' iteration {i:8d}/       4 | lm loss: 5.0 |', "
              "flush=True)\n    time.sleep(0.2)")
    monkeypatch.setattr(trainers, "torchrun_command", fake_run(script))
    assert 200 <= trainers.steady_ms_per_iter([], 2, 4, 2) < 2000


def test_a_failed_run_raises_with_its_output(monkeypatch):
    monkeypatch.setattr(trainers, "torchrun_command", fake_run("print('error: --lr -1: must be >= 0'); exit(2)"))
    with pytest.raises(RuntimeError, match="must be >= 0"):
        trainers.steady_ms_per_iter([], 2, 4, 2)
