"""The benchmark scripts run at tiny sizes and compute their figures as documented (no timing asserted)."""

import json

import pytest

from tools import bench_loop, bench_overhead, bench_preprocess, benchlib

TINY = ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--ffn-hidden-size", "64",
        "--seq-length", "32", "--max-position-embeddings", "32", "--vocab-size", "256"]


def test_interleave_runs_rounds_in_abba_order():
    calls = []
    results = benchlib.interleave(["a", "b"], 3, lambda v: calls.append(v) or len(calls))
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert results == {"a": [1, 4, 5], "b": [2, 3, 6]}
    assert benchlib.round_ratios(results, "a", "b") == [1 / 2, 4 / 3, 5 / 6]


def test_steady_ms_per_iter_leaves_out_warmup(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [{"kind": "train", "iteration": i, "ms_per_iter": ms} for i, ms in [(1, 900.0), (2, 10.0), (3, 30.0), (4, 20.0)]]
    path.write_text("\n".join(json.dumps(r) for r in [*rows, {"kind": "valid", "iteration": 4}]) + "\n")
    assert benchlib.steady_ms_per_iter(benchlib.train_records(str(path)), skip_iters=1) == 20.0
    with pytest.raises(ValueError, match="--train-iters"):
        benchlib.steady_ms_per_iter(benchlib.train_records(str(path)), skip_iters=4)


def test_bench_overhead_ratio_from_metrics_files(monkeypatch):
    """The driver: per-round medians from each run's metrics file, median of the round ratios."""
    ms = {"linupper": iter([101.0, 104.0, 99.0]), "uniform": iter([100.0, 100.0, 100.0])}

    def fake_torchrun(target, nproc):
        flags = target[1:]
        strategy = flags[flags.index("--reweight-strategy") + 1]
        value = next(ms[strategy])
        rows = [{"kind": "train", "iteration": i, "ms_per_iter": 5 * value if i == 1 else value} for i in (1, 2, 3)]
        with open(flags[flags.index("--metrics-file") + 1], "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in rows)

    monkeypatch.setattr(bench_overhead, "torchrun", fake_torchrun)
    ratio = bench_overhead.main(["--rounds", "3", "--train-iters", "3", "--skip-iters", "1"])
    assert ratio == pytest.approx(1.01)


def test_bench_preprocess_runs(documents_jsonl, tokenizer_model, capsys):
    ratio = bench_preprocess.main(["--input", documents_jsonl, "--tokenizer-model", tokenizer_model,
                                   "--workers", "1", "--rounds", "1"])
    assert ratio > 0
    assert "preprocessing throughput (preprocess / raw tokens/s" in capsys.readouterr().out


def test_bench_preprocess_repeats_fixtures_to_size(tmp_path):
    path = bench_preprocess.write_repeated_fixtures(str(tmp_path / "c.jsonl"), megabytes=0.5)
    texts = bench_preprocess.read_texts(path)
    assert 0.5e6 <= (tmp_path / "c.jsonl").stat().st_size < 1.0e6 and all(texts)


def test_bench_loop_bare_worker_writes_interval_times(tmp_path):
    out = tmp_path / "bare.json"
    benchlib.torchrun(["-m", "tools.bench_loop", "--bare", "--log-interval", "2", "--bare-out", str(out), "--",
                       *bench_loop.BASE_FLAGS, *TINY, "--train-iters", "4"], nproc=1)
    intervals = json.loads(out.read_text())
    assert [r["iteration"] for r in intervals] == [2, 4] and all(r["ms_per_iter"] > 0 for r in intervals)


def test_bench_loop_ratio_is_ours_over_bare_tokens_per_s(monkeypatch, tmp_path):
    """The driver: tokens/s from each variant's interval times, median of the round ratios."""
    ms = {"ours": iter([110.0, 100.0, 125.0]), "bare": iter([100.0, 100.0, 100.0])}

    def fake_torchrun(target, nproc):
        variant = "bare" if "--bare" in target else "ours"
        path = target[target.index("--bare-out" if variant == "bare" else "--metrics-file") + 1]
        rows = [{"kind": "train", "iteration": i, "ms_per_iter": next(ms[variant]) if i == 4 else 999.0} for i in (2, 4)]
        with open(path, "w") as handle:
            handle.write(json.dumps(rows) if variant == "bare" else "".join(json.dumps(r) + "\n" for r in rows))

    monkeypatch.setattr(bench_loop, "torchrun", fake_torchrun)
    ratio = bench_loop.main(["--rounds", "3", "--train-iters", "4", "--log-interval", "2", "--skip-iters", "2",
                             "--", *TINY])
    assert ratio == pytest.approx(100 / 110)
