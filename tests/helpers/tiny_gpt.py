"""A tiny megatron-core GPTModel and batches for the multi-process tests (call inside a rank)."""

import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from tests.helpers.distributed import rank_device

VOCAB = 64
SEQ = 16


def build_gpt(seed: int = 1234) -> GPTModel:
    """Llama-style (RMSNorm, SwiGLU, RoPE) 2-layer model for this rank's TP/PP position.

    Re-seeding first makes every call build the same weights. Embeddings are untied so that a
    model without DDP needs no embedding-group all-reduce to have exact gradients under PP.
    """
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    config = TransformerConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        ffn_hidden_size=64,
        normalization="RMSNorm",
        gated_linear_unit=True,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        pipeline_dtype=torch.float32,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
    )
    return GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )


def make_batches(num_micro: int, group_size: int, seed: int = 0) -> list[dict]:
    """``num_micro`` micro-batches of ``group_size`` samples (the whole DP group's), same on all ranks.

    Loss masks cut the tail of some samples at different lengths, so per-sample token means
    differ from the global token mean and a weighting error would show.
    """
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_micro):
        tokens = torch.randint(0, VOCAB, (group_size, SEQ), generator=gen)
        labels = torch.randint(0, VOCAB, (group_size, SEQ), generator=gen)
        lengths = torch.randint(SEQ // 2, SEQ + 1, (group_size,), generator=gen)
        loss_mask = (torch.arange(SEQ).unsqueeze(0) < lengths.unsqueeze(1)).float()
        batches.append(on_device({"tokens": tokens, "labels": labels, "loss_mask": loss_mask}))
    return batches


def rank_slice(batch: dict, dp_rank: int, micro_batch_size: int) -> dict:
    """This DP rank's samples of a group-sized batch."""
    lo = dp_rank * micro_batch_size
    return {k: v[lo : lo + micro_batch_size] for k, v in batch.items()}


def on_device(batch: dict) -> dict:
    """``batch`` moved to this rank's device."""
    return {k: v.to(rank_device()) for k, v in batch.items()}


def gpt_forward(model, batch: dict) -> torch.Tensor:
    """Per-token losses [b, s] (on the last stage; hidden states elsewhere)."""
    b, s = batch["tokens"].shape
    position_ids = torch.arange(s, device=batch["tokens"].device).unsqueeze(0).expand(b, s)
    return model(batch["tokens"], position_ids, None, labels=batch["labels"])
