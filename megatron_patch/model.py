"""GPTModel providers: megatron-core's ``GPTModel`` built from the resolved flags.

The layer spec is Transformer Engine's when ``transformer_engine`` imports (the Docker image,
GPU nodes) and ``--transformer-impl`` is ``transformer_engine`` (the default), megatron-core's
local one otherwise (CPU, CI): the math is the same, the kernels differ. Llama: RMSNorm, SwiGLU, RoPE, no biases, untied embeddings, GQA when set. GPT-2:
LayerNorm, GELU, learned positions, tied embeddings.

:func:`check_per_token_loss_path` refuses, at start-up and with reweighting on, a built model whose
loss path cannot give the per-token losses ``[b, s]`` the weights are computed from.
"""

import functools

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.torch_norm import WrappedTorchNorm

from .config import RunConfig
from .errors import ArgumentError


@functools.cache
def transformer_engine_available() -> bool:
    """Whether Transformer Engine imports (it needs CUDA); the fast path is optional."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "use the local spec"
        return False
    return True


def transformer_config(config: RunConfig) -> TransformerConfig:
    """The megatron-core ``TransformerConfig`` of the resolved run configuration."""
    m, parallel, training = config.model, config.parallel, config.training
    dtype = torch.bfloat16 if training.bf16 else torch.float16 if training.fp16 else torch.float32
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels,
        ffn_hidden_size=m.ffn_hidden_size or 4 * m.hidden_size,
        normalization=m.normalization,
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=bool(m.swiglu),
        activation_func=F.silu if m.swiglu else F.gelu,
        add_bias_linear=not m.disable_bias_linear,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        bf16=training.bf16,
        fp16=training.fp16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        calculate_per_token_loss=training.calculate_per_token_loss,
        layernorm_zero_centered_gamma=m.apply_layernorm_1p,
        # Both fused implementations return per-token losses [b, s] in megatron-core 0.16.1;
        # check_per_token_loss_path probes the configured one at start-up.
        cross_entropy_loss_fusion=m.cross_entropy_loss_fusion,
        cross_entropy_fusion_impl=m.cross_entropy_fusion_impl,
        # The remaining fusions are kernels only; off, so the local (CPU) spec runs unchanged.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
    )


def layer_spec(config: RunConfig):
    """Transformer Engine's layer spec when it imports, megatron-core's local one otherwise.

    ``--transformer-impl local`` asks for the local spec even where Transformer Engine imports
    (upstream's meaning: same math, unfused attention and megatron-core's own kernels). The local
    spec's norm is plain torch's (without apex), which has no zero-centred weights and no
    sequence parallelism: those flags are refused here, by name, rather than by an assertion deep
    inside megatron-core on every rank.
    """
    m = config.model
    if m.transformer_impl == "transformer_engine" and transformer_engine_available():
        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec(normalization=m.normalization)
    if spec.submodules.input_layernorm is WrappedTorchNorm:
        for flag, given in (("--apply-layernorm-1p", m.apply_layernorm_1p),
                            ("--sequence-parallel", config.parallel.sequence_parallel)):
            if given:
                raise ArgumentError(f"{flag} needs Transformer Engine's or apex's norms; neither imports here "
                                    "(CPU, or no transformer_engine/apex); drop the flag")
    return spec


def gpt_model_provider(config: RunConfig, pre_process: bool = True, post_process: bool = True,
                       vp_stage=None) -> GPTModel:
    """Build this rank's part of the model (its TP shard and PP stage)."""
    m = config.model
    return GPTModel(
        config=transformer_config(config),
        transformer_layer_spec=layer_spec(config),
        vocab_size=m.padded_vocab_size,
        max_sequence_length=m.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not m.untie_embeddings_and_output_weights,
        position_embedding_type=m.position_embedding_type,
        rotary_percent=m.rotary_percent,
        rotary_base=m.rotary_base,
    )


def _unwrap(model):
    """The GPTModel inside DDP / Float16Module wrappers (each keeps it in ``.module``)."""
    while not isinstance(model, GPTModel) and hasattr(model, "module"):
        model = model.module
    return model


def check_per_token_loss_path(model, reweight) -> None:
    """Refuse a model whose loss path cannot give per-token losses while reweighting is on.

    A reduced loss would make the weights meaningless and training silently unweighted (a peer
    library did exactly that). Static checks first: multi-token prediction and mixture-of-experts
    add auxiliary losses that no sample weight reaches. Then, on the last pipeline stage, a probe:
    ``compute_language_model_loss`` (plain, native fused or Transformer Engine cross entropy, as
    configured) must turn logits ``[s=2, b=2, vocab/tp]`` into losses ``[b=2, s=2]``. Call it on
    every rank once the model is built (the probe is a collective of the tensor-parallel group).

    Args:
        model: the built model, bare or wrapped (DDP, Float16Module).
        reweight: the :class:`megatron_patch.loss.ReweightConfig`; nothing is checked for ``uniform``.

    Raises:
        ArgumentError: one line naming the setting and what to change.
    """
    if not reweight.reweighting:
        return
    gpt = _unwrap(model)
    where = f"--reweight-strategy {reweight.strategy} needs per-token losses"
    if not isinstance(gpt, GPTModel):
        raise ArgumentError(f"{where}; the model provider returned {type(gpt).__name__}, not megatron-core's "
                            "GPTModel; return a GPTModel or use --reweight-strategy uniform")
    config = gpt.config
    if getattr(config, "mtp_num_layers", None):
        raise ArgumentError(f"{where}; multi-token prediction (mtp_num_layers={config.mtp_num_layers}) adds an "
                            "unweighted loss; turn it off or use --reweight-strategy uniform")
    if getattr(config, "num_moe_experts", None):
        raise ArgumentError(f"{where}; mixture-of-experts (num_moe_experts={config.num_moe_experts}) adds an "
                            "unweighted auxiliary loss; use a dense model or --reweight-strategy uniform")
    if not gpt.post_process:
        return
    setting = (f"--cross-entropy-loss-fusion --cross-entropy-fusion-impl {config.cross_entropy_fusion_impl}"
               if config.cross_entropy_loss_fusion else "the model's cross entropy")
    weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights \
        else gpt.output_layer.weight
    logits = torch.zeros(2, 2, weight.shape[0], dtype=weight.dtype, device=weight.device)  # [s, b, vocab/tp]
    labels = torch.zeros(2, 2, dtype=torch.long, device=weight.device)  # [b, s]
    try:
        with torch.no_grad():
            loss = gpt.compute_language_model_loss(labels, logits)
    except Exception as err:  # noqa: BLE001 - any failure of the probe is a refusal, with its reason
        raise ArgumentError(f"{where}; {setting} fails on a probe ({type(err).__name__}: {err}); "
                            "drop --cross-entropy-loss-fusion or use --reweight-strategy uniform") from None
    if not isinstance(loss, torch.Tensor) or tuple(loss.shape) != (2, 2):
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ArgumentError(f"{where}; {setting} returns {shape} for a [2, 2] batch, a reduced loss; "
                            "drop --cross-entropy-loss-fusion or use --reweight-strategy uniform")
