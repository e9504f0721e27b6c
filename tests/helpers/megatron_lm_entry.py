"""pretrain_llama.py with three test hooks: Megatron-LM's stock loss, its JIT warm-up's random draws undone,
and a record of every micro-batch loss.

    RW_STOCK_LOSS=1      the forward step returns Megatron-LM pretrain_gpt.py's loss_func (the masked
                         token-loss sum, its token count, {"lm loss": [sum, count]}) instead of ours
    RW_UNDO_WARMUP_DRAWS=1
                         --trainer megatron-lm: the torch generator is restored after Megatron-LM's
                         ``set_jit_fusion_options``, whose JIT warm-up draws random tensors after the
                         seeds are set (our loop has no warm-up, so dropout would draw other masks)
    RW_LOSS_RECORD=PATH  each rank appends "<loss as float.hex> <num_tokens>" per training micro-batch
                         to PATH.<rank>

Run like the entry point: ``torchrun ... tests/helpers/megatron_lm_entry.py FLAGS``.
"""

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

import pretrain_gpt  # noqa: E402


def stock_loss_func(loss_mask, output_tensor):
    """Megatron-LM's pretrain_gpt.py ``loss_func`` (core_v0.19.0), without its NaN/spike checks."""
    losses = output_tensor.view(-1).float()
    loss_mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * loss_mask)
    num_tokens = loss_mask.sum().clone().detach().to(torch.int)
    return loss, num_tokens, {"lm loss": torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])}


def recorded(loss_func, path):
    def record(output_tensor):
        loss, num_tokens, report = loss_func(output_tensor)
        if torch.is_grad_enabled():  # training micro-batches, not evaluation
            with open(f"{path}.{torch.distributed.get_rank()}", "a") as f:
                f.write(f"{loss.detach().float().item().hex()} {int(num_tokens)}\n")
        return loss, num_tokens, report

    return record


def forward_step(data_iterator, model, *, loss):
    if os.environ.get("RW_STOCK_LOSS"):
        batch = pretrain_gpt.get_batch(data_iterator)
        output_tensor = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        loss_func = functools.partial(stock_loss_func, batch["loss_mask"])
    else:
        output_tensor, loss_func = pretrain_gpt.forward_step(data_iterator, model, loss=loss)
    path = os.environ.get("RW_LOSS_RECORD")
    return output_tensor, (recorded(loss_func, path) if path else loss_func)


def undo_warmup_draws():
    from megatron.training import training as mlm_training

    warm_up = mlm_training.set_jit_fusion_options

    def set_jit_fusion_options(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return warm_up(*args, **kwargs)

    mlm_training.set_jit_fusion_options = set_jit_fusion_options


if __name__ == "__main__":
    from megatron_patch.training import pretrain

    if os.environ.get("RW_UNDO_WARMUP_DRAWS"):
        undo_warmup_draws()

    pretrain(pretrain_gpt.datasets_provider, pretrain_gpt.model_provider, forward_step, family="llama")
