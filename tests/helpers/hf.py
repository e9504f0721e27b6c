"""Tiny checkpoints for the Hugging Face converter tests: saved by the training code in real TP/PP
ranks (:func:`save_and_predict`, run with ``run_distributed``), with the logits and greedy tokens of
the model that was saved, computed by that model in the same ranks."""

import zlib

import torch
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from tests.helpers.config import config_of

# A Llama with GQA (4 heads, 2 key/value groups: one per TP rank), 520 words padded to 768 rows at TP 2.
LLAMA_FLAGS = ["--model", "tiny", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
               "--group-query-attention", "--num-query-groups", "2", "--ffn-hidden-size", "96",
               "--seq-length", "32", "--max-position-embeddings", "32", "--vocab-size", "520", "--mock-data",
               "--train-iters", "1", "--init-method-std", "0.05"]
# GPT-2 layout: tied embeddings, 48 learned positions for 32-token samples, dropout off.
GPT_FLAGS = ["--model", "gpt2-mini", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
             "--ffn-hidden-size", "128", "--seq-length", "32", "--max-position-embeddings", "48",
             "--vocab-size", "300", "--tokenizer-type", "NullTokenizer", "--mock-data", "--train-iters", "1",
             "--hidden-dropout", "0", "--attention-dropout", "0", "--init-method-std", "0.05"]


def tokens(vocab: int, batch: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def perturb(model) -> None:
    """Random norm weights and biases (1 and 0 at initialisation would hide two swapped tensors).

    Seeded by name and PP stage, and by TP rank for a TP-split tensor only, so that TP replicas
    stay equal, as the checkpoint (which keeps one of them) assumes.
    """
    stage, tp_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                split = tp_rank if getattr(param, "tensor_model_parallel", False) else 0
                gen = torch.Generator().manual_seed(zlib.crc32(f"{name}|{stage}|{split}".encode()))
                param.add_(0.3 * torch.randn(param.shape, generator=gen))


def forward_logits(gpt, ids: torch.Tensor) -> torch.Tensor | None:
    """Logits ``[b, s, padded vocab]`` on the last stage (TP-gathered), None on the others."""
    b, s = ids.shape
    positions = torch.arange(s).unsqueeze(0).expand(b, s)
    if not ps.is_pipeline_first_stage():
        hidden = torch.empty(s, b, gpt.config.hidden_size)
        torch.distributed.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
        gpt.set_input_tensor(hidden)
    out = gpt(ids, positions, None)
    if not ps.is_pipeline_last_stage():
        torch.distributed.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        return None
    return gather_from_tensor_model_parallel_region(out)


def greedy(gpt, prompt: torch.Tensor, new_tokens: int, vocab: int) -> torch.Tensor:
    """``prompt [1, p]`` followed by ``new_tokens`` argmax tokens (of the real vocabulary), on every rank."""
    ids = prompt
    for _ in range(new_tokens):
        logits = forward_logits(gpt, ids)
        token = logits[0, -1, :vocab].argmax().view(1, 1) if logits is not None else torch.zeros(1, 1, dtype=torch.long)
        if ps.get_pipeline_model_parallel_world_size() > 1:  # the last stage's token, to every stage
            torch.distributed.broadcast(token, src=ps.get_pipeline_model_parallel_last_rank(),
                                        group=ps.get_pipeline_model_parallel_group())
        ids = torch.cat([ids, token], dim=1)
    return ids


def _built(flags, family):
    """The config of ``flags`` and this rank's model, optimizer and schedule, as the training loop builds them."""
    from megatron_patch.distributed import set_seeds
    from megatron_patch.model import gpt_model_provider
    from megatron_patch.training import build_model_and_optimizer

    config = config_of(flags, family=family, world_size=torch.distributed.get_world_size())
    set_seeds(config.training.seed)
    return (config, *build_model_and_optimizer(gpt_model_provider, config))


def save_and_predict(flags, family, root, ids, prompt, new_tokens):
    """In every rank: build the run's model and optimizer, perturb, save a checkpoint (iteration 3)
    and run.json, then return the saved model's logits on ``ids`` and its greedy continuation."""
    from megatron_patch import checkpointing

    config, model, optimizer, _ = _built(flags, family)
    perturb(model.module)
    parallel = config.parallel
    state = checkpointing.LoopState(iteration=3, layout=dict(dp=parallel.data_parallel_size, cp=1,
                                                            tp=parallel.tensor_model_parallel_size,
                                                            pp=parallel.pipeline_model_parallel_size))
    checkpointing.save_checkpoint(str(root), model, optimizer, state, log=lambda message: None)
    if torch.distributed.get_rank() == 0:
        checkpointing.write_run_record(str(root), config)
    gpt = model.module
    gpt.eval()
    with torch.no_grad():
        logits = forward_logits(gpt, ids)
        generated = greedy(gpt, prompt, new_tokens, config.model.vocab_size)
    return {"logits": logits, "generated": generated}


def load_and_predict(flags, family, load, ids):
    """In every rank: our model of ``flags`` resumed from ``load`` (``resume``): its loop state and logits."""
    from megatron_patch import checkpointing

    config, model, optimizer, scheduler = _built([*flags, "--load", str(load)], family)
    state = checkpointing.LoopState(layout=dict(dp=config.parallel.data_parallel_size))
    lr_before = scheduler.get_lr(optimizer.param_groups[0])
    checkpointing.resume(config, model, optimizer, scheduler, state)
    model.module.eval()
    with torch.no_grad():
        logits = forward_logits(model.module, ids)
    return {"iteration": state.iteration, "logits": logits, "lr_unchanged": scheduler.get_lr(optimizer.param_groups[0])
            == lr_before, "optimizer_state": sum(len(getattr(o, "optimizer", o).state)
                                                 for o in getattr(optimizer, "chained_optimizers", [optimizer]))}
