"""Closed-form estimates: FLOPs per token against hand counts, memory scaling, the --dry-run report."""

import re

import pytest

import pretrain_gpt
import pretrain_llama
from megatron_patch.errors import ArgumentError
from megatron_patch.estimate import (
    dry_run_report,
    flops_per_token,
    layer_activation_bytes,
    memory_per_gpu,
    parameter_count,
    tokens_per_step,
)
from tests.helpers.config import config_of


def _config(argv, world_size=1, family="llama"):
    return config_of([*argv, "--mock-data", "--train-iters", "1"], family=family, world_size=world_size)


def test_flops_per_token_llama_1_4b_by_hand():
    # Matmul weights of one layer: q, k, v, o are 2048 x 2048 each; SwiGLU gate, up, down 2048 x 5632.
    layer = 4 * 2048 * 2048 + 3 * 2048 * 5632  # 51,380,224
    weights = 24 * layer + 32000 * 2048  # + output layer: 1,298,661,376
    # Attention per token and layer: QK^T and AV, 2 FLOPs x 4096 positions x 2048 dims each, causal half.
    attention = 24 * (2 * 4096 * 2048 + 2 * 4096 * 2048) // 2  # 402,653,184
    forward = 2 * weights + attention
    assert 3 * forward == 8_999_927_808  # forward + backward (2 x forward)
    assert flops_per_token(_config(["--model", "llama-1.4b"]).model) == 8_999_927_808


def test_flops_per_token_llama_7b_by_hand():
    layer = 4 * 4096 * 4096 + 3 * 4096 * 11008  # 202,375,168
    weights = 32 * layer + 32000 * 4096  # 6,607,077,376
    attention = 32 * (2 * 4096 * 4096 + 2 * 4096 * 4096) // 2  # 1,073,741,824
    assert 3 * (2 * weights + attention) == 42_863_689_728
    assert flops_per_token(_config(["--model", "llama-7b"]).model) == 42_863_689_728


def test_flops_per_token_with_grouped_query_attention_by_hand():
    # Llama 3 8B: k and v have 8 groups x 128 = 1024 columns; attention still runs over 32 heads.
    argv = ["--model", "llama-7b", "--ffn-hidden-size", "14336", "--group-query-attention", "--num-query-groups", "8",
            "--vocab-size", "128256", "--seq-length", "8192", "--max-position-embeddings", "8192"]
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    weights = 32 * layer + 128256 * 4096
    attention = 32 * 2 * 8192 * 4096  # half of 4 s d
    assert flops_per_token(_config(argv).model) == 3 * (2 * weights + attention)


def test_memory_estimate_scales_with_the_layout():
    base = ["--model", "llama-7b", "--bf16", "--micro-batch-size", "2"]
    one = memory_per_gpu(_config(base, world_size=64))
    params = 32 * 202_383_360 + 2 * 32000 * 4096  # layers (with their two norms) and both embeddings
    assert one.weights_gib == pytest.approx(params * 2 / 2**30)
    assert one.optimizer_gib == pytest.approx(params * 12 / 2**30)
    sharded = memory_per_gpu(_config([*base, "--use-distributed-optimizer"], world_size=64))
    assert sharded.optimizer_gib == pytest.approx(one.optimizer_gib / 64)
    tp2 = memory_per_gpu(_config([*base, "--tensor-model-parallel-size", "2"], world_size=64))
    assert tp2.weights_gib == pytest.approx(one.weights_gib / 2)
    sp = memory_per_gpu(_config([*base, "--tensor-model-parallel-size", "2", "--sequence-parallel"], world_size=64))
    assert sp.activations_gib < tp2.activations_gib


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_activations_are_korthikantis_formula_for_the_gpt3_layout(tp):
    # Korthikanti et al. 2022, Table 2 (no recomputation), per layer in bytes, a GPT-3 layer in 16 bit:
    # s*b*h*(10 + 24/t) with flash attention (no score matrices), 34/t with sequence parallelism,
    # plus 5*a*s*s*b/t when attention is unfused (scores' softmax, its dropout mask and output).
    s_, b, h, a = 2048, 4, 1024, 16
    base = ["--num-layers", "4", "--hidden-size", str(h), "--num-attention-heads", str(a), "--seq-length", str(s_),
            "--micro-batch-size", str(b), "--bf16", "--vocab-size", "1000", "--tensor-model-parallel-size", str(tp)]
    gpt3 = _config(base, world_size=tp, family="gpt")  # GELU 4h MLP, dropout 0.1: upstream's defaults
    assert layer_activation_bytes(gpt3) == pytest.approx(s_ * b * h * (10 + 24 / tp))
    local = _config([*base, "--transformer-impl", "local"], world_size=tp, family="gpt")
    assert layer_activation_bytes(local) == pytest.approx(s_ * b * h * (10 + 24 / tp) + 5 * a * s_ * s_ * b / tp)
    if tp > 1:
        sp = _config([*base, "--sequence-parallel"], world_size=tp, family="gpt")
        assert layer_activation_bytes(sp) == pytest.approx(s_ * b * h * 34 / tp)


def test_memory_of_llama_1_4b_by_hand():
    config = _config(["--model", "llama-1.4b", "--bf16", "--micro-batch-size", "2", "--use-distributed-optimizer"],
                 world_size=64)
    # Kept per token and layer, 2 bytes each: two norm inputs and two matmul inputs (4 x 2048), q, k, v
    # and the attention output (4 x 2048), SwiGLU gate and up outputs (2 x 5632), their product (5632).
    per_token = 2 * (4 * 2048 + 4 * 2048 + 2 * 5632 + 5632)
    logits = 8 * 2 * 4096 * 32000  # fp32 logits and softmax of the micro-batch
    mem = memory_per_gpu(config)
    assert mem.activations_gib == pytest.approx((24 * 2 * 4096 * per_token + logits) / 2**30)
    assert mem.weights_gib == pytest.approx(1_364_297_728 * 2 / 2**30)
    assert mem.optimizer_gib == pytest.approx(1_364_297_728 * 12 / 64 / 2**30)
    assert tokens_per_step(config) == 128 * 4096


def test_memory_of_the_busiest_pipeline_stage_by_hand():
    # llama-7b, PP=4: 8 layers a stage, 4 micro-batches a step; 1F1B keeps 4 in flight on the first
    # stage (with the input embedding) and 1 on the last (with the output layer and the logits).
    config = _config(["--model", "llama-7b", "--bf16", "--micro-batch-size", "2", "--pipeline-model-parallel-size", "4",
                  "--global-batch-size", "128"],
                 world_size=64)
    per_layer = 2 * 4096 * 2 * (4 * 4096 + 4 * 4096 + 2 * 11008 + 11008)
    mem = memory_per_gpu(config)
    assert mem.activations_gib == pytest.approx(8 * 4 * per_layer / 2**30)
    assert mem.weights_gib == pytest.approx((8 * 202_383_360 + 32000 * 4096) * 2 / 2**30)


def test_dry_run_needs_the_vocabulary():
    config = _config(["--model", "tiny", "--dry-run"])
    with pytest.raises(ArgumentError, match="--vocab-size"):
        dry_run_report(config)
    assert "parameters: " in dry_run_report(_config(["--model", "tiny", "--dry-run", "--vocab-size", "8000"]))


def _reported_parameters(text: str) -> int:
    return int(re.search(r"^parameters: ([\d,]+) ", text, re.M).group(1).replace(",", ""))


@pytest.mark.parametrize("preset, paper, exact", [("llama-1.4b", 1.364e9, 1_364_297_728),
                                                  ("llama-7b", 6.738e9, 6_738_415_616)])
def test_dry_run_reports_the_papers_sizes(preset, paper, exact, capsys, monkeypatch):
    # pretrain_llama.main is the command line's entry (``python pretrain_llama.py ...``), in-process.
    monkeypatch.setenv("WORLD_SIZE", "64")
    pretrain_llama.main(["--model", preset, "--dry-run", "--micro-batch-size", "2", "--bf16"])
    out = capsys.readouterr().out
    n = _reported_parameters(out)
    assert n == exact and abs(n / paper - 1) < 0.02
    assert "tokens per step: 524,288 (128 sequences x 4096)" in out
    assert "reweighting group: 128 samples" in out and "memory per GPU (estimate, GiB)" in out
    assert '"num_query_groups": ' in out  # the resolved arguments come first


def test_bad_flag_exits_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain_llama.main(["--model", "llama-7b", "--dry-run", "--tensor-model-parallel-size", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "--tensor-model-parallel-size 3" in err


def test_dry_run_refusal_is_the_only_output(capsys):
    # A shape without a vocabulary: the refusal, not the resolved arguments followed by it.
    with pytest.raises(SystemExit) as exit_info:
        pretrain_gpt.main(["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
                           "--seq-length", "32", "--mock-data", "--train-iters", "1", "--dry-run"])
    out = capsys.readouterr()
    assert exit_info.value.code == 2 and out.out == ""
    assert out.err.count("\n") == 1 and "--vocab-size" in out.err


def test_dry_run_states_the_reweighting_group(capsys, monkeypatch):
    # 8 GPUs, micro batch 2, global batch 128: 8 accumulation steps; the group is 16 or the whole 128.
    monkeypatch.setenv("WORLD_SIZE", "8")
    base = ["--model", "llama-1.4b", "--dry-run", "--micro-batch-size", "2", "--global-batch-size", "128",
            "--reweight-strategy", "linupper"]
    pretrain_llama.main(base)
    assert "reweighting group: 16 samples (micro batch x DP)" in capsys.readouterr().out
    pretrain_llama.main([*base, "--reweight-group", "global-batch"])
    assert "reweighting group: 128 samples (global batch)" in capsys.readouterr().out
