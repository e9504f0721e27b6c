"""GPTModel providers: megatron-core's ``GPTModel`` built from the resolved flags.

The layer spec is Transformer Engine's when ``transformer_engine`` imports (the Docker image,
GPU nodes), megatron-core's local one otherwise (CPU, CI): the math is the same, the kernels
differ. Llama: RMSNorm, SwiGLU, RoPE, no biases, untied embeddings, GQA when set. GPT-2:
LayerNorm, GELU, learned positions, tied embeddings.
"""

import argparse
import functools

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig


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


def transformer_config_from_args(args: argparse.Namespace) -> TransformerConfig:
    """The megatron-core ``TransformerConfig`` for the resolved flags."""
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    return TransformerConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        kv_channels=args.kv_channels,
        ffn_hidden_size=args.ffn_hidden_size or 4 * args.hidden_size,
        normalization=args.normalization,
        layernorm_epsilon=args.norm_epsilon,
        gated_linear_unit=bool(args.swiglu),
        activation_func=F.silu if args.swiglu else F.gelu,
        add_bias_linear=not args.disable_bias_linear,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        sequence_parallel=args.sequence_parallel,
        bf16=args.bf16,
        fp16=args.fp16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        calculate_per_token_loss=args.calculate_per_token_loss,
        # Per-token losses [b, s] are what the reweighting needs; the fused paths give them too,
        # but keep the plain one unless TE is there.
        cross_entropy_loss_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
    )


def layer_spec(args: argparse.Namespace):
    if transformer_engine_available():
        return get_gpt_layer_with_transformer_engine_spec()
    return get_gpt_layer_local_spec(normalization=args.normalization)


def gpt_model_provider(args: argparse.Namespace, pre_process: bool = True, post_process: bool = True,
                       vp_stage=None) -> GPTModel:
    """Build this rank's part of the model (its TP shard and PP stage)."""
    config = transformer_config_from_args(args)
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(args),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
    )
