"""Closed-form sizes for ``--dry-run`` and the throughput tools: parameters, memory, FLOPs.

Parameters are counted exactly as megatron-core's GPTModel builds them (TP=1 totals). Memory per
GPU is an estimate (documented below, in GiB); FLOPs follow the usual 6 x parameters per token for
the dense matmuls plus the attention score/value matmuls, with **causal attention counted at
half** (only the lower triangle is useful work).
"""

import dataclasses

from .config import ModelConfig, RunConfig
from .errors import ArgumentError

# Dense bf16/fp16 tensor-core peak of one GPU, TFLOP/s (vendor data sheets, without sparsity):
# H100 SXM5 and H200 SXM 989.4, H100 PCIe 756, A100 312.
PEAK_TFLOPS = {"h100-sxm": 989.0, "h100-pcie": 756.0, "h200": 989.0, "a100": 312.0}


def _layer_widths(model: ModelConfig) -> tuple[int, int, int]:
    """(query width, key+value width, MLP input-projection width) of one layer."""
    kv = model.kv_channels or model.hidden_size // model.num_attention_heads
    ffn = model.ffn_hidden_size or 4 * model.hidden_size
    return model.num_attention_heads * kv, 2 * model.num_query_groups * kv, ffn * (2 if model.swiglu else 1)


def layer_matmul_weights(model: ModelConfig) -> int:
    """Weights of one layer's matmuls: QKV, attention output, MLP in (x2 for SwiGLU) and out."""
    h = model.hidden_size
    q_width, kv_width, fc1_width = _layer_widths(model)
    ffn = model.ffn_hidden_size or 4 * h
    return h * (q_width + kv_width) + q_width * h + h * fc1_width + ffn * h


def layer_params(model: ModelConfig) -> int:
    """Parameters of one transformer layer: its matmul weights, their biases, two norms."""
    h = model.hidden_size
    q_width, kv_width, fc1_width = _layer_widths(model)
    biases = 0 if model.disable_bias_linear else q_width + kv_width + h + fc1_width + h
    norm = h * (2 if model.normalization == "LayerNorm" else 1)  # LayerNorm has a bias, RMSNorm not
    return layer_matmul_weights(model) + biases + 2 * norm


def embedding_params(model: ModelConfig) -> int:
    """Input embedding (+ learned positions) and, if untied, the output layer."""
    vocab = model.padded_vocab_size
    n = vocab * model.hidden_size
    if model.position_embedding_type == "learned_absolute":
        n += model.max_position_embeddings * model.hidden_size
    if model.untie_embeddings_and_output_weights:
        n += vocab * model.hidden_size
    return n


def parameter_count(model: ModelConfig) -> int:
    """Total parameters of the model (all TP/PP shards together)."""
    final_norm = model.hidden_size * (2 if model.normalization == "LayerNorm" else 1)
    return model.num_layers * layer_params(model) + embedding_params(model) + final_norm


def flops_per_token(model: ModelConfig) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward).

    Dense: 2 FLOPs per weight and token in the forward for every matmul weight (the layers and
    the output layer; the input embedding is a lookup; norms, biases and activations are left
    out, under 0.1%). Attention: QK^T and AV cost 2 * 2 * s * (heads * kv) per token and layer
    in the forward, halved for the causal mask (only the lower triangle is useful work).
    """
    kv = model.kv_channels or model.hidden_size // model.num_attention_heads
    matmul_weights = model.num_layers * layer_matmul_weights(model) + model.padded_vocab_size * model.hidden_size
    attention = model.num_layers * 2 * model.seq_length * model.num_attention_heads * kv  # causal: half of 4*s*d
    return 3 * (2 * matmul_weights + attention)


def mfu(tokens_per_s_per_gpu: float, model: ModelConfig, peak_tflops: float) -> float:
    """Model FLOPs utilisation: ``tokens/s per GPU x flops_per_token / peak FLOP/s``, in [0, 1].

    Model FLOPs, not hardware FLOPs: recomputation, padding and the loss's own work are not
    credited, so the figure compares across implementations. ``peak_tflops``: the GPU's dense
    peak in the training precision, e.g. ``PEAK_TFLOPS["h100-sxm"]``.
    """
    return tokens_per_s_per_gpu * flops_per_token(model) / (peak_tflops * 1e12)


def tokens_per_step(config: RunConfig) -> int:
    """Tokens of one optimizer step: the global batch of full sequences."""
    return config.training.global_batch_size * config.model.seq_length


@dataclasses.dataclass
class MemoryEstimate:
    """Estimated peak memory of one GPU, in GiB, by kind."""

    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib


def layer_activation_bytes(config: RunConfig) -> float:
    """Bytes one transformer layer keeps for the backward, per micro-batch (no recomputation).

    Korthikanti et al. (2022)'s accounting with this model's widths. Per token: the inputs of the two
    norms and of the two matmuls after them, ``4h`` values (divided by TP with sequence parallelism,
    else replicated); Q, K, V and the attention output ``q + kv + q`` (flash attention keeps these,
    not the scores); the MLP input projection's output ``g*f`` (``g`` = 2 with SwiGLU) and the
    activation's output ``f``, all divided by TP; one byte per value of each of the two
    dropout-after-residual masks when ``--hidden-dropout`` > 0. For a GELU 4h MLP, full multi-head
    attention and dropout this is the paper's ``s*b*h*(10 + 24/t)`` bytes (``34/t`` with sequence
    parallel). With ``--transformer-impl local`` attention is unfused and also keeps the softmax
    output per head, ``a*s*s`` values per sequence, plus a mask and the dropped copy when
    ``--attention-dropout`` > 0.
    """
    m, tp = config.model, config.parallel.tensor_model_parallel_size
    value = 2 if (config.training.bf16 or config.training.fp16) else 4  # bytes of one activation value
    h, heads, seq = m.hidden_size, m.num_attention_heads, m.seq_length
    q_width, kv_width, fc1_width = _layer_widths(m)
    ffn = m.ffn_hidden_size or 4 * h
    replicated = value * 4 * h + (2 * h if m.hidden_dropout else 0)
    split = value * (2 * q_width + kv_width + fc1_width + ffn)
    per_token = replicated / tp if config.parallel.sequence_parallel else replicated
    per_token += split / tp
    if m.transformer_impl == "local":
        per_token += heads * seq * (value + ((1 + value) if m.attention_dropout else 0)) / tp
    return seq * config.training.micro_batch_size * per_token


def memory_per_gpu(config: RunConfig) -> MemoryEstimate:
    """Estimated peak memory of the busiest GPU (first or last pipeline stage), no recomputation.

    States per parameter of the stage's TP shard: weights in the training dtype (2 bytes in
    bf16/fp16, else 4); gradient buffers in fp32 (4); Adam's fp32 master weights, m and v (12 bytes
    in bf16/fp16; m and v, 8, in fp32), divided over DP with ``--use-distributed-optimizer``.
    Activations: :func:`layer_activation_bytes` per layer and micro-batch; the first stage of a
    1F1B pipeline holds ``min(pp, micro-batches)`` micro-batches, the last one. The last stage also
    holds the logits in fp32 and their softmax for the cross entropy, 8 bytes per value of
    ``[s, b, vocab/tp]``. The first stage holds the input embedding (and learned positions), the last
    the output layer (a copy of the embedding when tied, as megatron-core keeps it). Allocator
    fragmentation, communication buffers and the CUDA context (a few GiB) are not included.
    """
    m, parallel, training = config.model, config.parallel, config.training
    tp, pp, dp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size, parallel.data_parallel_size
    low_precision = training.bf16 or training.fp16
    layers = m.num_layers // pp
    vocab_rows = m.padded_vocab_size * m.hidden_size
    input_embedding = vocab_rows + (m.max_position_embeddings * m.hidden_size
                                    if m.position_embedding_type == "learned_absolute" else 0)
    final_norm = m.hidden_size * (2 if m.normalization == "LayerNorm" else 1)
    first_params = layers * layer_params(m) + input_embedding
    last_params = layers * layer_params(m) + vocab_rows + final_norm
    if pp == 1:
        first_params = last_params = parameter_count(m)
    logits = 8 * m.seq_length * training.micro_batch_size * m.padded_vocab_size / tp
    first_activations = layer_activation_bytes(config) * layers * min(pp, training.num_microbatches)
    last_activations = layer_activation_bytes(config) * layers + logits
    if pp == 1:
        first_activations = last_activations
    stages = []
    for params, activations in ((first_params, first_activations), (last_params, last_activations)):
        shard = params / tp
        optimizer = shard * (12 if low_precision else 8) / (dp if parallel.use_distributed_optimizer else 1)
        stages.append(MemoryEstimate(*(x / 1024**3 for x in (
            shard * (2 if low_precision else 4), shard * 4, optimizer, activations))))
    return max(stages, key=lambda m: m.total_gib)


def dry_run_report(config: RunConfig) -> str:
    """What ``--dry-run`` prints after the resolved configuration.

    Raises:
        ArgumentError: the vocabulary is unknown (no ``--vocab-size`` and no preset that sets it).
    """
    m, parallel, training = config.model, config.parallel, config.training
    if m.padded_vocab_size is None:
        raise ArgumentError("--dry-run needs the vocabulary size; pass --vocab-size (the tokenizer's) "
                            "or a --model preset that sets it")
    n = parameter_count(m)
    mem = memory_per_gpu(config)
    tokens = tokens_per_step(config)
    group = config.reweight.group_size(training.micro_batch_size, parallel.data_parallel_size, training.num_microbatches)
    lines = [
        f"parameters: {n:,} ({n / 1e9:.3f}B)",
        f"layout: TP={parallel.tensor_model_parallel_size} PP={parallel.pipeline_model_parallel_size} "
        f"CP={parallel.context_parallel_size} DP={parallel.data_parallel_size}, {training.num_microbatches} "
        "micro-batch(es) per step",
        f"tokens per step: {tokens:,} ({training.global_batch_size} sequences x {m.seq_length})",
        f"reweighting group: {group} samples ({'global batch' if config.reweight.group == 'global-batch' else 'micro batch x DP'})",
        f"training FLOPs per token: {flops_per_token(m):.4g}",
        f"memory per GPU (estimate, GiB): weights {mem.weights_gib:.1f} + grads {mem.grads_gib:.1f} + "
        f"optimizer {mem.optimizer_gib:.1f} + activations {mem.activations_gib:.1f} = {mem.total_gib:.1f}",
    ]
    return "\n".join(lines)
