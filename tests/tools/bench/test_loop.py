"""tools/bench/loop.py: the bare worker under torchrun, and the driver's figure from fake runs."""

import json

import pytest

from megatron_patch.launch import run_torchrun
from tools.bench import loop

TINY = ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--ffn-hidden-size", "64",
        "--seq-length", "32", "--max-position-embeddings", "32", "--vocab-size", "256"]


def test_bench_loop_bare_worker_writes_interval_times(tmp_path):
    out = tmp_path / "bare.json"
    run_torchrun(["-m", "tools.bench.loop", "--bare", "--log-interval", "2", "--bare-out", str(out), "--",
                  *loop.BASE_FLAGS, *TINY, "--train-iters", "4"], nproc=1)
    intervals = json.loads(out.read_text())
    assert [r["iteration"] for r in intervals] == [2, 4] and all(r["ms_per_iter"] > 0 for r in intervals)


def test_bench_loop_ratio_is_ours_over_bare_tokens_per_s(monkeypatch, capsys):
    """The driver: tokens/s from each variant's interval times, median of the round ratios."""
    ms = {"ours": iter([110.0, 100.0, 125.0]), "bare": iter([100.0, 100.0, 100.0])}
    order = []

    def fake_run_torchrun(target, nproc):
        variant = "bare" if "--bare" in target else "ours"
        order.append(variant)
        path = target[target.index("--bare-out" if variant == "bare" else "--metrics-file") + 1]
        rows = [{"kind": "train", "iteration": i, "ms_per_iter": next(ms[variant]) if i == 4 else 999.0} for i in (2, 4)]
        with open(path, "w") as handle:
            handle.write(json.dumps(rows) if variant == "bare" else "".join(json.dumps(r) + "\n" for r in rows))

    monkeypatch.setattr(loop, "run_torchrun", fake_run_torchrun)
    ratio = loop.main(["--rounds", "3", "--train-iters", "4", "--log-interval", "2", "--skip-iters", "2",
                       "--", *TINY])
    assert ratio == pytest.approx(100 / 110)
    assert order == ["ours", "bare", "bare", "ours", "ours", "bare"]
    # tokens per step: global batch (micro batch 2 x 2 ranks) x seq 32 = 128; at 100 ms: 1280 tokens/s
    out = capsys.readouterr().out
    assert "  bare:    100.0 ms/step,     1280 tokens/s" in out
    assert "  ours:    125.0 ms/step,     1024 tokens/s" in out
    assert f"of 3 rounds): {100 / 110:.4g} [0.8, 1]; target >= 0.97: NOT met" in out
