"""The group's collectives under context parallelism, in real gloo CP groups.

Each sample's tokens are split over the CP group the way the forward step splits a batch
(``split_for_context_parallel``: megatron-core's ``get_batch_on_this_cp_rank``, two chunks per
rank, load-balanced). The reweighted loss must then equal the one of whole samples: the same per-sample losses and weights on every CP rank, and
for every token the gradient the whole-sample reference gives it.
"""

import torch
from megatron.core import parallel_state as ps

from megatron_patch.groups import cp_sample_loss, split_for_context_parallel
from megatron_patch.loss import GROUP_LOSSES, reweighted_loss
from reweighting import sample_weights

B, S, R = 3, 16, 0.5


def _whole_group():
    """Token losses and masks [dp*B, S] of the whole DP group (the same on every rank)."""
    gen = torch.Generator().manual_seed(3)
    n = ps.get_data_parallel_world_size() * B
    token_loss = torch.rand(n, S, generator=gen) * 4
    lengths = torch.randint(S // 4, S + 1, (n,), generator=gen)
    mask = (torch.arange(S).unsqueeze(0) < lengths.unsqueeze(1)).float()
    return token_loss, mask


def _positions_of_this_cp_rank():
    """Which of the S positions this CP rank holds, in its order (megatron-core's split, applied to 0..S-1)."""
    return split_for_context_parallel({"p": torch.arange(S).unsqueeze(0)}, ps.get_context_parallel_group())["p"][0]


def check_cp_loss_path():
    """Run in every rank: split samples give the whole samples' losses, weights and token gradients."""
    dp_rank, cp_size = ps.get_data_parallel_rank(), ps.get_context_parallel_world_size()
    dp_size = ps.get_data_parallel_world_size()
    token_loss, mask = _whole_group()
    rows = slice(dp_rank * B, (dp_rank + 1) * B)
    local = split_for_context_parallel({"t": token_loss[rows], "m": mask[rows]}, ps.get_context_parallel_group())
    assert local["t"].shape == (B, S // cp_size)
    leaf = local["t"].clone().requires_grad_(True)
    cp_group = ps.get_context_parallel_group()

    _, losses, counts = cp_sample_loss(leaf, local["m"], cp_group)
    whole_losses = (token_loss * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(losses, whole_losses[rows], rtol=1e-6, atol=0)
    assert torch.equal(counts, mask[rows].sum(1))

    loss, num_tokens, report = reweighted_loss(local["m"], leaf, strategy="linupper", r=R,
                                               dp_group=ps.get_data_parallel_group(), cp_group=cp_group)
    # What reaches the gradient: the schedule divides by this rank's tokens, DDP averages over DP x CP.
    (loss / num_tokens.clamp(min=1) / (dp_size * cp_size)).backward()
    w = sample_weights(whole_losses, "linupper", R)
    torch.testing.assert_close(report[GROUP_LOSSES], whole_losses, rtol=1e-6, atol=0)
    # The reference gradient of sum_i w_i l_i with respect to token t of sample i: w_i mask / count_i.
    reference = (w / mask.sum(1)).unsqueeze(1) * mask
    positions = _positions_of_this_cp_rank()
    torch.testing.assert_close(leaf.grad, reference[rows][:, positions], rtol=1e-5, atol=1e-8)
    return report["weighted loss"].tolist(), report["nonfinite"].tolist(), report["ess"].tolist()


def test_context_parallel_loss_equals_whole_samples(run_distributed):
    results = run_distributed(check_cp_loss_path, 4, cp=2)  # DP=2 x CP=2
    weighted = [r[0] for r in results]
    # Summed over DP x CP and divided by the count, the weighted loss is the group's sum_i w_i l_i.
    token_loss, mask = None, None
    total = sum(v for v, _ in weighted) / sum(c for _, c in weighted)
    gen = torch.Generator().manual_seed(3)
    token_loss = torch.rand(2 * B, S, generator=gen) * 4
    lengths = torch.randint(S // 4, S + 1, (2 * B,), generator=gen)
    mask = (torch.arange(S).unsqueeze(0) < lengths.unsqueeze(1)).float()
    losses = (token_loss * mask).sum(1) / mask.sum(1)
    assert abs(total - (sample_weights(losses, "linupper", R) * losses).sum().item()) < 1e-5
    assert sum(r[1][0] for r in results) == 0 and sum(r[1][1] for r in results) == 2 * B  # samples counted once
    assert len({tuple(r[2]) for r in results}) == 1  # every rank: the same weight statistics
