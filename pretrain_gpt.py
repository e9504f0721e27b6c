"""Pretrain a GPT model with online loss-based sample reweighting (GPT-2 family defaults).

    torchrun --nproc_per_node 2 pretrain_gpt.py --model gpt2-mini --mock-data --train-iters 20 \\
        --reweight-strategy linupper --reweight-r 1.0

Shaped like Megatron-LM's pretrain_gpt.py: a model provider, a datasets provider, a forward
step, one ``pretrain(...)`` call. Without a ``--model`` preset the GPT-2 layout applies
(LayerNorm, GELU, learned positions, tied embeddings); ``pretrain_llama.py`` runs the same
steps with the Llama layout. Without torchrun (``python pretrain_gpt.py ...``) it trains as one
process.
"""

from megatron_patch.version_guard import require_megatron_core

# Before anything imports megatron-core's training parts: a renamed symbol in another
# megatron-core version is then one clear error, not an ImportError traceback on every rank.
require_megatron_core()

import torch  # noqa: E402
from megatron.core import parallel_state as ps  # noqa: E402

from megatron_patch.data import build_datasets  # noqa: E402
from megatron_patch.groups import split_for_context_parallel  # noqa: E402
from megatron_patch.model import gpt_model_provider  # noqa: E402
from megatron_patch.training import pretrain  # noqa: E402

FAMILY = "gpt"


def model_provider(config, pre_process=True, post_process=True):
    """This rank's part of the model (its TP shard and PP stage)."""
    return gpt_model_provider(config, pre_process=pre_process, post_process=post_process)


def datasets_provider(config, tokenizer):
    """Training blend and fixed per-domain validation sets (built on every rank)."""
    return build_datasets(config, tokenizer)


def get_batch(data_iterator) -> dict:
    """The next micro-batch on this rank's device: tokens, labels, loss_mask, position_ids [b, s].

    With context parallelism each CP rank keeps its two chunks of every sequence (megatron-core's
    load-balanced split); the loss then adds the chunks' token losses over the CP group.
    """
    batch = next(data_iterator)
    device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
    batch = {key: value.to(device) for key, value in batch.items()}
    if ps.get_context_parallel_world_size() > 1:
        domains = batch.pop("dataset_id", None)  # per sample, not per token: not split
        batch = split_for_context_parallel(batch, ps.get_context_parallel_group())
        if domains is not None:
            batch["dataset_id"] = domains
    return batch


def forward_step(data_iterator, model, *, loss):
    """One micro-batch: GPTModel's per-token losses [b, s] and the micro-batch's ``loss_func``.

    ``loss`` is the run's :class:`megatron_patch.loss.SampleLoss`; the loop binds it, so the
    schedule sees Megatron-LM's ``forward_step(data_iterator, model)``.
    """
    batch = get_batch(data_iterator)
    output_tensor = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    return output_tensor, loss.loss_func(batch["loss_mask"], batch.get("dataset_id"))


def main(argv=None, family=FAMILY):
    pretrain(datasets_provider, model_provider, forward_step, family=family, argv=argv)


if __name__ == "__main__":
    main()
