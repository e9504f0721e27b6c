"""GPTModel provider: the closed-form parameter count against real models; the per-token loss guard.

Models are built in one real process group (world size 1, gloo on CPU) started by the
``run_distributed`` fixture; each check runs several configurations to pay for one start-up.
"""

import pytest
import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

import pretrain_gpt
from megatron_patch.errors import ArgumentError
from megatron_patch.estimate import parameter_count
from megatron_patch.loss import ReweightConfig, SampleLoss
from megatron_patch.model import (
    check_per_token_loss_path,
    gpt_model_provider,
    layer_spec,
    transformer_config,
    transformer_engine_available,
)
from tests.helpers.config import config_of

TINY = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "16",
        "--vocab-size", "100", "--mock-data", "--train-iters", "1"]

# (family, extra flags): both families, GQA, tied/untied, LayerNorm with biases, kv-channels, SwiGLU rule.
SHAPES = [
    ("llama", []),
    ("llama", ["--group-query-attention", "--num-query-groups", "2"]),
    ("llama", ["--group-query-attention", "--kv-channels", "8", "--ffn-hidden-size", "80"]),
    ("llama", ["--untie-embeddings-and-output-weights", "--normalization", "LayerNorm"]),
    ("gpt", []),
    ("gpt", ["--untie-embeddings-and-output-weights", "--max-position-embeddings", "40"]),
    ("gpt", ["--swiglu", "--group-query-attention", "--num-query-groups", "2", "--disable-bias-linear"]),
    ("gpt", ["--normalization", "RMSNorm", "--position-embedding-type", "rope", "--rotary-percent", "0.5"]),
]


def _config(family, extra, world_size=1):
    return config_of([*TINY, *extra], family=family, world_size=world_size)


def _count_models(shapes):
    tensor_parallel.model_parallel_cuda_manual_seed(1)
    out = []
    for family, extra in shapes:
        config = _config(family, extra)
        model = gpt_model_provider(config)
        out.append((sum(p.numel() for p in model.parameters()), parameter_count(config.model)))
    return out


def test_parameter_count_matches_built_models(run_distributed):
    (counts,) = run_distributed(_count_models, world_size=1, shapes=SHAPES)
    for (built, estimated), shape in zip(counts, SHAPES):
        assert built == estimated, shape


class _ReducedLossGPT:
    """Turns a GPTModel into one whose loss path returns a scalar, as a reducing fused CE would."""

    @staticmethod
    def patch(model):
        full = model.compute_language_model_loss
        model.compute_language_model_loss = lambda labels, logits: full(labels, logits).mean()
        return model


def _loss_path_checks():
    """Every refusal of check_per_token_loss_path, and the forward step's own shape check."""
    tensor_parallel.model_parallel_cuda_manual_seed(1)
    linupper = ReweightConfig(strategy="linupper")
    results = {}

    def outcome(model, reweight=linupper):
        try:
            check_per_token_loss_path(model, reweight)
        except ArgumentError as err:
            return str(err)
        return "ok"

    plain = gpt_model_provider(_config("llama", []))
    results["plain"] = outcome(plain)
    results["not a GPTModel"] = outcome(torch.nn.Linear(2, 2))
    results["wrapped"] = outcome(type("DDP", (), {"module": plain})())  # DDP and Float16Module keep .module
    results["tied"] = outcome(gpt_model_provider(_config("gpt", [])))
    results["fused native"] = outcome(gpt_model_provider(_config("llama", ["--cross-entropy-loss-fusion"])))
    te = gpt_model_provider(_config("llama", ["--cross-entropy-loss-fusion", "--cross-entropy-fusion-impl", "te"]))
    results["fused te"] = outcome(te)
    results["fused te, uniform"] = outcome(te, ReweightConfig())
    reduced = _ReducedLossGPT.patch(gpt_model_provider(_config("llama", [])))
    results["reduced"] = outcome(reduced)
    results["reduced, uniform"] = outcome(reduced, ReweightConfig())
    mtp = gpt_model_provider(_config("llama", []))
    mtp.config.mtp_num_layers = 1
    results["mtp"] = outcome(mtp)

    # The loss refuses a reduced output even when start-up was skipped: never unweighted.
    loss = SampleLoss(linupper, ps.get_data_parallel_group())
    batch = {"tokens": torch.zeros(2, 16, dtype=torch.long), "labels": torch.zeros(2, 16, dtype=torch.long),
             "loss_mask": torch.ones(2, 16), "position_ids": torch.arange(16).expand(2, 16)}
    output, loss_func = pretrain_gpt.forward_step(iter([batch]), reduced, loss=loss)
    try:
        loss_func(output)
        results["forward step"] = "ok"
    except RuntimeError as err:
        results["forward step"] = str(err)
    output, loss_func = pretrain_gpt.forward_step(iter([batch]), plain, loss=loss)
    results["forward step, per token"] = tuple(output.shape)
    results["forward step, loss"] = bool(torch.isfinite(loss_func(output)[0]))
    return results


def test_per_token_loss_path_is_checked(run_distributed):
    (r,) = run_distributed(_loss_path_checks, world_size=1)
    assert r["plain"] == r["wrapped"] == r["tied"] == r["fused native"] == "ok"
    assert "Linear, not megatron-core's GPTModel" in r["not a GPTModel"]
    # No Transformer Engine on CPU: the TE cross entropy fails the probe, named; uniform needs no probe.
    assert "--cross-entropy-fusion-impl te" in r["fused te"] and r["fused te, uniform"] == "ok"
    assert "returns () for a [2, 2] batch, a reduced loss" in r["reduced"] and r["reduced, uniform"] == "ok"
    assert "multi-token prediction" in r["mtp"]
    assert all("\n" not in v for v in r.values() if isinstance(v, str))
    assert "not per-token losses" in r["forward step"]
    assert r["forward step, per token"] == (2, 16) and r["forward step, loss"]


def _config_fields(argv):
    config = transformer_config(_config("llama", argv, world_size=2))
    return {name: getattr(config, name) for name in (
        "num_query_groups", "kv_channels", "ffn_hidden_size", "init_method_std", "hidden_dropout",
        "attention_dropout", "layernorm_epsilon", "sequence_parallel", "layernorm_zero_centered_gamma",
        "cross_entropy_loss_fusion", "gated_linear_unit", "add_bias_linear")}


def test_flags_reach_the_transformer_config():
    fields = _config_fields(["--group-query-attention", "--num-query-groups", "2", "--kv-channels", "8",
                             "--init-method-std", "0.0134", "--hidden-dropout", "0.05", "--attention-dropout",
                             "0.02", "--norm-epsilon", "1e-6", "--tensor-model-parallel-size", "2",
                             "--sequence-parallel", "--apply-layernorm-1p", "--cross-entropy-loss-fusion"])
    assert fields == dict(num_query_groups=2, kv_channels=8, ffn_hidden_size=128, init_method_std=0.0134,
                          hidden_dropout=0.05, attention_dropout=0.02, layernorm_epsilon=1e-6, sequence_parallel=True,
                          layernorm_zero_centered_gamma=True, cross_entropy_loss_fusion=True, gated_linear_unit=True,
                          add_bias_linear=False)


@pytest.mark.parametrize("flags", [["--apply-layernorm-1p"], ["--tensor-model-parallel-size", "2", "--sequence-parallel"]])
def test_norm_flags_the_torch_norm_cannot_do_are_refused(flags):
    if transformer_engine_available():
        pytest.skip("Transformer Engine's norms support zero-centred weights and sequence parallelism")
    with pytest.raises(ArgumentError, match=f"{flags[-1]} needs Transformer Engine's or apex's norms"):
        layer_spec(_config("llama", flags, world_size=2))


def test_transformer_impl_selects_the_layer_spec(monkeypatch):
    # Pretend Transformer Engine imports: its spec is used unless --transformer-impl local asks otherwise.
    import megatron_patch.model as model_module

    te_spec = object()
    monkeypatch.setattr(model_module, "transformer_engine_available", lambda: True)
    monkeypatch.setattr(model_module, "get_gpt_layer_with_transformer_engine_spec", lambda: te_spec)
    assert layer_spec(_config("llama", [])) is te_spec
    local = layer_spec(_config("llama", ["--transformer-impl", "local"]))
    assert local is not te_spec and local.submodules.input_layernorm is not None
