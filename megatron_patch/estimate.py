"""Closed-form sizes for ``--dry-run`` and the throughput tools: parameters, memory, FLOPs.

Parameters are counted exactly as megatron-core's GPTModel builds them (TP=1 totals). Memory per
GPU is an estimate (documented below, in GiB); FLOPs follow the usual 6 x parameters per token for
the dense matmuls plus the attention score/value matmuls, with **causal attention counted at
half** (only the lower triangle is useful work).
"""

import argparse
import dataclasses

# Dense bf16 peak of one GPU, TFLOP/s (vendor data sheets, without sparsity).
PEAK_TFLOPS = {"h100-sxm": 989.0, "h100-pcie": 756.0, "h200": 989.0, "a100": 312.0}


def _layer_widths(args: argparse.Namespace) -> tuple[int, int, int]:
    """(query width, key+value width, MLP input-projection width) of one layer."""
    kv = args.kv_channels or args.hidden_size // args.num_attention_heads
    ffn = args.ffn_hidden_size or 4 * args.hidden_size
    return args.num_attention_heads * kv, 2 * args.num_query_groups * kv, ffn * (2 if args.swiglu else 1)


def layer_matmul_weights(args: argparse.Namespace) -> int:
    """Weights of one layer's matmuls: QKV, attention output, MLP in (x2 for SwiGLU) and out."""
    h = args.hidden_size
    q_width, kv_width, fc1_width = _layer_widths(args)
    ffn = args.ffn_hidden_size or 4 * h
    return h * (q_width + kv_width) + q_width * h + h * fc1_width + ffn * h


def layer_params(args: argparse.Namespace) -> int:
    """Parameters of one transformer layer: its matmul weights, their biases, two norms."""
    h = args.hidden_size
    q_width, kv_width, fc1_width = _layer_widths(args)
    biases = 0 if args.disable_bias_linear else q_width + kv_width + h + fc1_width + h
    norm = h * (2 if args.normalization == "LayerNorm" else 1)  # LayerNorm has a bias, RMSNorm not
    return layer_matmul_weights(args) + biases + 2 * norm


def embedding_params(args: argparse.Namespace) -> int:
    """Input embedding (+ learned positions) and, if untied, the output layer."""
    vocab = args.padded_vocab_size
    n = vocab * args.hidden_size
    if args.position_embedding_type == "learned_absolute":
        n += args.max_position_embeddings * args.hidden_size
    if args.untie_embeddings_and_output_weights:
        n += vocab * args.hidden_size
    return n


def parameter_count(args: argparse.Namespace) -> int:
    """Total parameters of the model (all TP/PP shards together)."""
    final_norm = args.hidden_size * (2 if args.normalization == "LayerNorm" else 1)
    return args.num_layers * layer_params(args) + embedding_params(args) + final_norm


def flops_per_token(args: argparse.Namespace) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward).

    Dense: 2 FLOPs per weight and token in the forward for every matmul weight (the layers and
    the output layer; the input embedding is a lookup; norms, biases and activations are left
    out, under 0.1%). Attention: QK^T and AV cost 2 * 2 * s * (heads * kv) per token and layer
    in the forward, halved for the causal mask (only the lower triangle is useful work).
    """
    kv = args.kv_channels or args.hidden_size // args.num_attention_heads
    matmul_weights = args.num_layers * layer_matmul_weights(args) + args.padded_vocab_size * args.hidden_size
    attention = args.num_layers * 2 * args.seq_length * args.num_attention_heads * kv  # causal: half of 4*s*d
    return 3 * (2 * matmul_weights + attention)


def mfu(tokens_per_s_per_gpu: float, args: argparse.Namespace, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak."""
    return tokens_per_s_per_gpu * flops_per_token(args) / (peak_tflops * 1e12)


@dataclasses.dataclass
class MemoryEstimate:
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib


def memory_per_gpu(args: argparse.Namespace) -> MemoryEstimate:
    """Estimated peak memory of the busiest GPU (first pipeline stage), no recomputation.

    States: weights in the training dtype (2 bytes in bf16/fp16, else 4), fp32 gradient buffers
    (4 bytes), Adam's fp32 master weights, m and v (12 bytes), divided over DP with the
    distributed optimizer. Activations (Korthikanti et al. 2022): per layer and micro-batch
    ``s*b*h*(10 + 24/t)`` bytes (``34/t`` with sequence parallel), assuming flash/fused attention
    as Transformer Engine runs it on the cluster (the unfused ``5*a*s^2*b/t`` bytes of attention
    scores are not stored); the first stage of a 1F1B pipeline holds ``min(pp, micro-batches)``
    micro-batches; plus the fp32 logits and their gradient.
    """
    tp, pp, dp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.data_parallel_size
    low_precision = args.bf16 or args.fp16
    layers_per_stage = args.num_layers // pp
    params = (layers_per_stage * layer_params(args) + embedding_params(args)) / tp
    gib = 1024**3
    weights = params * (2 if low_precision else 4)
    grads = params * 4
    optimizer = params * (12 if low_precision else 8) / (dp if args.use_distributed_optimizer else 1)
    s, b, h = args.seq_length, args.micro_batch_size, args.hidden_size
    per_layer = s * b * h * ((34 / tp) if args.sequence_parallel else (10 + 24 / tp))
    in_flight = min(pp, args.num_microbatches) if pp > 1 else 1
    logits = 2 * 4 * s * b * args.padded_vocab_size / tp
    activations = per_layer * layers_per_stage * in_flight + logits
    return MemoryEstimate(weights / gib, grads / gib, optimizer / gib, activations / gib)


def dry_run_report(args: argparse.Namespace) -> str:
    """What ``--dry-run`` prints after the resolved arguments."""
    n = parameter_count(args)
    mem = memory_per_gpu(args)
    tokens = args.global_batch_size * args.seq_length
    lines = [
        f"parameters: {n:,} ({n / 1e9:.3f}B)",
        f"layout: TP={args.tensor_model_parallel_size} PP={args.pipeline_model_parallel_size} "
        f"CP={args.context_parallel_size} DP={args.data_parallel_size}, {args.num_microbatches} micro-batch(es) per step",
        f"tokens per step: {tokens:,} ({args.global_batch_size} sequences x {args.seq_length})",
        f"reweighting group: {args.micro_batch_size * args.data_parallel_size} samples (micro batch x DP)",
        f"training FLOPs per token: {flops_per_token(args):.4g}",
        f"memory per GPU (estimate, GiB): weights {mem.weights_gib:.1f} + grads {mem.grads_gib:.1f} + "
        f"optimizer {mem.optimizer_gib:.1f} + activations {mem.activations_gib:.1f} = {mem.total_gib:.1f}",
    ]
    return "\n".join(lines)
