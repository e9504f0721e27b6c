"""The reweighting group's collectives: per-sample losses (over CP), gathered and weighed (over DP).

A sample's loss is the token mean of its masked token losses. With context parallelism its
tokens are split over the CP group, so their sums and counts are all-reduced there first
(:func:`cp_sample_loss`). The group's per-sample losses are then all-gathered over the
data-parallel group, weighed by :func:`reweighting.sample_weights` on every rank alike, and each
rank keeps its slice by its DP rank (:func:`dp_sample_weights`). Never the world group: under TP
or PP the world is not the DP group.
"""

import dataclasses
import functools
import inspect
import math

import torch
from megatron.core.utils import get_batch_on_this_cp_rank

from reweighting import sample_weights


def split_for_context_parallel(batch: dict, cp_group) -> dict:
    """This CP rank's two chunks of every [b, s] tensor of ``batch`` (megatron-core's load-balanced
    split of whole sequences) in ``cp_group``.

    The group is passed, never left to megatron-core: 0.19 splits over the world group when it is
    None. 0.19 also added a required ``is_hybrid_cp`` (hybrid CP, of packed documents); our
    batches hold whole sequences, so it is off, and 0.16.1 has no such parameter.
    """
    if _takes_hybrid_flag():
        return get_batch_on_this_cp_rank(batch, is_hybrid_cp=False, cp_group=cp_group)
    return get_batch_on_this_cp_rank(batch, cp_group=cp_group)


@functools.cache
def _takes_hybrid_flag() -> bool:
    return "is_hybrid_cp" in inspect.signature(get_batch_on_this_cp_rank).parameters


def per_sample_loss(token_loss: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean loss of each sample over its mask (differentiable).

    Args:
        token_loss: [b, s] per-token losses.
        loss_mask: [b, s] (or [b*s]) 1 for tokens that count.

    Returns:
        ``losses`` [b] float32 (NaN where the mask is empty, non-finite where a counted token is)
        and ``counts`` [b] float32, the number of masked tokens.
    """
    sums, counts = _masked_sums(token_loss, loss_mask)
    # clamp keeps the backward of an empty sample finite (0/0 would be NaN even with zero grad).
    return torch.where(counts > 0, sums / counts.clamp(min=1), math.nan), counts


def _masked_sums(token_loss, loss_mask):
    """Masked token-loss sums [b] (differentiable) and token counts [b] of this rank's tokens."""
    mask = loss_mask.view_as(token_loss) > 0
    # torch.where, not a product: a non-finite loss on a masked-out token must not leak into the sum.
    return torch.where(mask, token_loss.float(), 0.0).sum(dim=1), mask.sum(dim=1).float()


def _cp_size(cp_group) -> int:
    return 1 if cp_group is None else torch.distributed.get_world_size(group=cp_group)


def cp_sample_loss(token_loss: torch.Tensor, loss_mask: torch.Tensor, cp_group):
    """Per-sample losses when context parallelism splits each sample's tokens over ``cp_group``.

    The masked sums and counts of the local tokens are all-reduced over the CP group (one
    collective), so every CP rank holds every sample's whole token mean.

    Returns:
        ``live`` [b]: this rank's differentiable share, ``local sum / total count`` (the shares of
        the CP ranks add up to the sample's loss); ``losses`` [b] detached whole-sample losses (NaN
        where the sample has no token); ``counts`` [b] its tokens over the whole CP group.
    """
    if _cp_size(cp_group) == 1:
        live, counts = per_sample_loss(token_loss, loss_mask)
        return live, live.detach(), counts
    sums, counts = _masked_sums(token_loss, loss_mask)
    totals = torch.stack([sums.detach(), counts])  # [2, b]
    torch.distributed.all_reduce(totals, group=cp_group)
    total_sums, counts = totals.unbind(0)
    losses = torch.where(counts > 0, total_sums / counts.clamp(min=1), math.nan)
    return sums / counts.clamp(min=1), losses, counts


def gather_dp(local: torch.Tensor, dp_group) -> torch.Tensor:
    """All-gather ``local`` [b, k] (detached) over the DP group into [dp_size * b, k], DP-rank-major."""
    dp_size = torch.distributed.get_world_size(group=dp_group)
    out = local.new_empty((dp_size * local.shape[0], *local.shape[1:]))
    torch.distributed.all_gather_into_tensor(out, local.detach().contiguous(), group=dp_group)
    return out


@dataclasses.dataclass
class GroupWeights:
    """The weights of one reweighting group and this rank's share of them.

    ``scale`` is the number of micro-batches the group spans (1 for ``micro-batch``, the step's
    for ``global-batch``): the schedule averages micro-batches, which a group spanning them undoes.
    """

    local: torch.Tensor  # [b] this rank's samples of the current micro-batch
    weights: torch.Tensor  # [N] the whole group, the same on every DP rank
    losses: torch.Tensor  # [N]
    domain_ids: torch.Tensor | None  # [N] long
    scale: int = 1
    stats: dict | None = None  # weight_stats of the group, when computed once for all its micro-batches


def dp_sample_weights(
    losses: torch.Tensor, *, strategy: str, r: float, delta: float, dp_group, domain_ids: torch.Tensor | None = None
) -> GroupWeights:
    """Weights of this rank's samples, computed over the samples of the whole DP group.

    Args:
        losses: [n] detached per-sample losses of this rank (one micro-batch, or a whole step's).
        domain_ids: optional [n] domain ids, gathered in the same collective.

    Returns:
        The group's weights [dp*n] (the same on every DP rank) with this rank's slice ``local`` [n]
        by its DP rank.
    """
    if dp_group is None:
        # None would mean the world group, which is not the DP group under TP or PP.
        raise ValueError("dp_group is required: pass parallel_state.get_data_parallel_group()")
    n = losses.shape[0]
    dp_rank = torch.distributed.get_rank(group=dp_group)
    # One collective: losses and domain ids travel together (ids are exact in float32 below 2**24).
    ids = domain_ids.float() if domain_ids is not None else torch.zeros_like(losses)
    group = gather_dp(torch.stack([losses.float(), ids], dim=1), dp_group)  # [dp*n, 2]
    weights = sample_weights(group[:, 0], strategy, r, delta)  # [dp*n], 0 where non-finite
    group_ids = group[:, 1].long() if domain_ids is not None else None
    return GroupWeights(weights[dp_rank * n : (dp_rank + 1) * n], weights, group[:, 0], group_ids)
