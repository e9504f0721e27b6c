"""Pretrain a GPT model with online loss-based sample reweighting (GPT-2 family defaults).

    torchrun --nproc_per_node 2 pretrain_gpt.py --model gpt2-mini --mock-data --train-iters 20 \\
        --reweight-strategy linupper --reweight-r 1.0

Shaped like Megatron-LM's pretrain_gpt.py: a model provider, a datasets provider, a forward
step, one ``pretrain(...)`` call. Without a ``--model`` preset the GPT-2 layout applies
(LayerNorm, GELU, learned positions, tied embeddings); ``pretrain_llama.py`` runs the same
steps with the Llama layout.
"""

from megatron_patch.version_guard import require_megatron_core

# Before anything imports megatron-core's training parts: a renamed symbol in another
# megatron-core version is then one clear error, not an ImportError traceback on every rank.
require_megatron_core()

import torch  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402

from megatron_patch.data import build_datasets  # noqa: E402
from megatron_patch.model import gpt_model_provider  # noqa: E402
from megatron_patch.training import pretrain  # noqa: E402

FAMILY = "gpt"


def model_provider(args, pre_process=True, post_process=True):
    """This rank's part of the model (its TP shard and PP stage)."""
    return gpt_model_provider(args, pre_process=pre_process, post_process=post_process)


def datasets_provider(args, tokenizer):
    """Training blend and fixed per-domain validation sets (built on every rank)."""
    return build_datasets(args, tokenizer, is_built_on_rank=lambda: True)


def forward_step(data_iterator, model, step):
    """One micro-batch: per-token losses [b, s] and the (reweighted) loss function."""
    batch = next(data_iterator)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    tokens = batch["tokens"].to(device)
    labels = batch["labels"].to(device)
    loss_mask = batch["loss_mask"].to(device)
    position_ids = batch["position_ids"].to(device)
    domain_ids = batch.get("dataset_id")
    if domain_ids is not None:
        domain_ids = domain_ids.to(device)
    output_tensor = model(tokens, position_ids, None, labels=labels)
    if ps.is_pipeline_last_stage() and output_tensor.shape != labels.shape:
        raise RuntimeError(f"the model returned {tuple(output_tensor.shape)}, not per-token losses "
                           f"{tuple(labels.shape)}; reweighting needs per-token losses")
    return output_tensor, step.loss_func(loss_mask, domain_ids)


def main(argv=None, family=FAMILY):
    pretrain(datasets_provider, model_provider, forward_step, family=family, argv=argv)


if __name__ == "__main__":
    main()
