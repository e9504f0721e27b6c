"""``--reweight-group global-batch`` in megatron-core's schedules: a step weighed as one group.

Several micro-batches (and DP ranks, and pipeline stages) under ``global-batch`` must give what
one micro-batch holding the whole step gives: the same per-sample losses, the same weights, the
same gradients. The reference is a plain (non-DDP) model on one micro-batch of all 8 samples with
``sample_weights`` computed here; ``uniform`` stays the stock loss in both modes.
"""

import pytest
import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import finalize_model_grads

from megatron_patch.loss import GROUP_LOSSES, ReweightConfig, SampleLoss
from reweighting import sample_weights
from tests.helpers.tiny_gpt import build_gpt, make_batches, rank_slice
from tests.megatron_patch.test_loss_distributed import _grads, _run_schedule, _wrap_ddp

GLOBAL = 8  # samples per step
MICRO = 2  # samples per DP rank and micro-batch
R = 0.5


def _step_batches():
    """This rank's micro-batches of the step, and the whole step as one batch (same on all ranks)."""
    whole = make_batches(1, GLOBAL, seed=7)[0]
    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    # Sample k of the step is in micro-batch k // (MICRO * dp) on DP rank (k // MICRO) % dp.
    blocks = []
    for start in range(0, GLOBAL, MICRO * dp_size):
        block = {k: v[start : start + MICRO * dp_size] for k, v in whole.items()}
        blocks.append(rank_slice(block, dp_rank, MICRO))
    return blocks, whole


def _global_batch_step(model, batches, config):
    """One step the way the loop runs it under global-batch: the first pass, weigh, train."""
    loss = SampleLoss(config, ps.get_data_parallel_group())
    loss.start_step(0)
    assert loss.needs_first_pass == config.reweighting
    if loss.needs_first_pass:
        with torch.no_grad(), loss.first_pass():
            _run_schedule(model, batches, lambda batch: loss.loss_func(batch["loss_mask"]), forward_only=True)
        loss.weigh_step()
    return _run_schedule(model, batches, lambda batch: loss.loss_func(batch["loss_mask"]))


def _reference_loss_func(batch):
    """One micro-batch of the whole step: sum_i w_i * l_i, the weights of all its samples."""
    def loss_func(output_tensor):
        mask = batch["loss_mask"]
        losses = (output_tensor * mask).sum(1) / mask.sum(1)  # [8]
        w = sample_weights(losses.detach(), "linupper", R)
        num_tokens = mask.sum().to(torch.int)
        return (w * losses).sum() * num_tokens, num_tokens, {"w": w.detach(), "l": losses.detach()}
    return loss_func


def check_global_batch_is_one_group():
    """Run in every rank: global-batch over the layout equals one micro-batch of the whole step."""
    batches, whole = _step_batches()
    model = _wrap_ddp(build_gpt(), distributed_optimizer=False)
    reports = _global_batch_step(model, batches, ReweightConfig("linupper", r=R, group="global-batch"))
    finalize_model_grads([model])
    got = _grads(model.module)

    reference = build_gpt()
    ref_reports = _run_schedule(reference, [whole], _reference_loss_func)
    expected = _grads(reference)
    for name, g in got.items():
        torch.testing.assert_close(g, expected[name], rtol=1e-5, atol=1e-7, msg=name)
    if ps.is_pipeline_last_stage():
        (ref,) = ref_reports
        # Every micro-batch's report carries the whole step's group: the losses of all 8 samples.
        for report in reports:
            group = report[GROUP_LOSSES]
            assert group.shape == (GLOBAL,)
            # Same samples, in the order of the gather (DP-rank-major over the step's micro-batches).
            torch.testing.assert_close(group.sort().values, ref["l"].sort().values, rtol=1e-6, atol=0)
            assert report["weighted loss"][1] == 1
        weighted = sum(r["weighted loss"][0] for r in reports) / len(reports)
        total = torch.tensor(weighted)
        torch.distributed.all_reduce(total, group=ps.get_data_parallel_group())
        torch.testing.assert_close(total / ps.get_data_parallel_world_size(), (ref["w"] * ref["l"]).sum(),
                                   rtol=1e-5, atol=0)
        assert all(torch.equal(r["ess"], reports[0]["ess"]) for r in reports)  # one group: one ESS


def check_uniform_is_stock_in_both_modes():
    """Run in every rank: uniform under global-batch is the stock loss, without a first pass."""
    batches, _ = _step_batches()
    grads = []
    for group in ("micro-batch", "global-batch"):
        model = _wrap_ddp(build_gpt(), distributed_optimizer=False)
        _global_batch_step(model, batches, ReweightConfig("uniform", group=group))
        finalize_model_grads([model])
        grads.append(_grads(model.module))
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def check_all():
    check_global_batch_is_one_group()
    check_uniform_is_stock_in_both_modes()


@pytest.mark.parametrize("world_size,pp", [(1, 1), (2, 1), (2, 2), (4, 2)], ids=["dp1", "dp2", "pp2", "dp2xpp2"])
def test_global_batch_equals_one_micro_batch_of_the_step(run_distributed, world_size, pp):
    run_distributed(check_all, world_size, pp=pp)


def test_group_size_and_flag():
    assert ReweightConfig("linupper", group="global-batch").group_size(2, 4, 16) == 128
    assert ReweightConfig("linupper").group_size(2, 4, 16) == 8
    assert ReweightConfig("linupper", group="global-batch").state_dict()["group"] == "global-batch"
