"""The FLOP formula against a hand count, the peak table lookup, and a tiny run of tools/bench/throughput.py."""

import json
import os
import subprocess
import sys

import pytest

from megatron_patch.estimate import PEAK_TFLOPS, flops_per_token, mfu
from megatron_patch.launch import ROOT
from tests.helpers.config import config_of
from tools.bench.throughput import detect_gpu


def _preset(name):
    """The model section of preset ``name``."""
    return config_of(["--model", name, "--mock-data", "--train-iters", "1"]).model


def _hand_count(layers, hidden, ffn, vocab, seq):
    """Training FLOPs per token of a Llama layout without GQA, written out from the shapes.

    Forward: 2 FLOPs per weight of every matmul (q, k, v, o: 4 h^2; SwiGLU gate, up, down:
    3 h ffn; the output layer: vocab h), plus QK^T and AV, 2 s h each, halved for the causal
    mask. Backward costs twice the forward.
    """
    matmul_weights = layers * (4 * hidden * hidden + 3 * hidden * ffn) + vocab * hidden
    attention = layers * (2 * seq * hidden + 2 * seq * hidden) // 2
    return 3 * (2 * matmul_weights + attention)


# The estimate also counts the two RMSNorm weight vectors of each layer as matmul weights:
# 6 x 2h x layers FLOPs, under 1e-4 of the total for both presets.
@pytest.mark.parametrize("preset, shape, total", [
    ("llama-1.4b", (24, 2048, 5632, 32000, 4096), 8_999_927_808),
    ("llama-7b", (32, 4096, 11008, 32000, 4096), 42_863_689_728),
])
def test_flops_per_token_matches_hand_count(preset, shape, total):
    assert _hand_count(*shape) == total
    assert flops_per_token(_preset(preset)) == pytest.approx(total, rel=1e-4)


def test_mfu_is_model_flops_over_peak():
    args = _preset("llama-1.4b")
    assert mfu(50_000, args, 989.0) == pytest.approx(50_000 * flops_per_token(args) / 989e12)


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA H100 NVL", None), ("Tesla V100-SXM2-16GB", None),
])
def test_detect_gpu(name, key):
    assert detect_gpu(name) == key
    assert key is None or key in PEAK_TFLOPS


def test_bench_throughput_runs_on_a_tiny_model(tmp_path):
    out = tmp_path / "figures.json"
    shape = ["--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2", "--ffn-hidden-size", "64",
             "--seq-length", "32", "--max-position-embeddings", "32", "--vocab-size", "256", "--micro-batch-size", "2"]
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "tools.bench.throughput", "--steps", "2", "--warmup", "1",
         "--loss-reps", "2", "--peak-tflops", "1.0", "--json", str(out), "--", *shape],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MFU:" in proc.stdout and "step time ratio" in proc.stdout
    f = json.loads(out.read_text())
    assert f["layers"] == 1 and f["seq_length"] == 32 and f["world_size"] == 1
    assert f["tokens_per_s_per_device"] == pytest.approx(2 * 32 / (f["step_ms"]["uniform"] / 1000))
    assert f["mfu"] == pytest.approx(f["tokens_per_s_per_device"] * f["flops_per_token"] / 1e12)
    assert f["step_time_ratio"] > 0 and set(f["loss_func_ms"]) == {"uniform", "linupper"}
    # The derived figures follow from the measured ones, and the report prints those numbers.
    step, loss = f["step_ms"], f["loss_func_ms"]
    assert f["step_time_ratio"] == pytest.approx(step["linupper"] / step["uniform"])
    assert f["loss_func_extra_share"] == pytest.approx((loss["linupper"] - loss["uniform"]) / step["uniform"])
    assert (f["peak_tflops"], f["peak_source"], f["global_batch_size"]) == (1.0, "--peak-tflops", 2)
    assert f["model_tflops_per_device"] == pytest.approx(f["mfu"] * 1.0)
    for line in (f"step time (median): uniform {step['uniform']:.1f} ms, linupper {step['linupper']:.1f} ms",
                 f"tokens/s per device: {f['tokens_per_s_per_device']:.0f}",
                 f"MFU: {f['mfu']:.1%} of 1.0 TFLOP/s (--peak-tflops)",
                 f"reweighting (linupper): step time ratio {f['step_time_ratio']:.4f}; loss function "
                 f"{loss['uniform']:.3f} -> {loss['linupper']:.3f} ms, extra = {f['loss_func_extra_share']:.3%} of the step"):
        assert line in proc.stdout.splitlines()
