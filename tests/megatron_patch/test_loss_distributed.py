"""The reweighted loss inside megatron-core's schedules, DDP and optimizers, in real gloo groups.

One launch per parallel layout (DP=2; DP=2 x TP=2; DP=2 x PP=2) runs every check of that layout:
- the weights every rank used equal ``sample_weights`` of the concatenated group, computed here;
- with TP, every TP rank holds the same per-token losses (asserted, not assumed);
- ``linupper`` gradients after DDP's DP average equal those of a DP=1 model on the doubled batch;
- ``uniform`` gradients equal those of Megatron's stock masked-mean loss, bit for bit;
- two micro-batches per step; a non-finite sample (weight 0, counted, gradients finite);
- megatron-core's (distributed) optimizer applies exactly those gradients (SGD step).
"""

import pytest
import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from tests.helpers.tiny_gpt import SEQ, build_gpt, gpt_forward, make_batches, rank_slice

import megatron_patch.loss as loss_mod
from reweighting import sample_weights

MICRO = 2  # samples per DP rank per micro-batch
NUM_MICRO = 2
R = 0.5
LR = 0.1


def _run_schedule(model, batches, loss_func_for, forward_only=False):
    """One forward-backward over ``batches`` through megatron-core's schedule; returns the reports."""
    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        return gpt_forward(model, batch), loss_func_for(batch)

    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(batches), model=[model],
        num_microbatches=len(batches), seq_length=SEQ, micro_batch_size=batches[0]["tokens"].shape[0],
        forward_only=forward_only,
    )


def _stock_loss_func(batch):
    """Megatron's pretrain_gpt loss: masked sum and token count (an independent re-statement)."""
    def loss_func(output_tensor):
        mask = batch["loss_mask"].view(-1).float()
        loss = torch.sum(output_tensor.view(-1).float() * mask)
        return loss, mask.sum().to(torch.int), {}
    return loss_func


def _reference_loss_func(nan_at, batch_index):
    """DP=1 reference on a whole group: sum_i w_i * l_i with w from ``sample_weights`` of the group.

    A sample listed in ``nan_at`` gets weight 0 (its loss is non-finite in the distributed run).
    """
    def make(batch):
        idx = next(batch_index)

        def loss_func(output_tensor):
            mask = batch["loss_mask"]
            losses = (output_tensor * mask).sum(1) / mask.sum(1)  # [N]
            marked = losses.detach().clone()
            for micro, sample in nan_at:
                if micro == idx:
                    marked[sample] = float("nan")
            w = sample_weights(marked, "linupper", R)
            loss = (w * torch.where(torch.isfinite(marked), losses, 0.0)).sum()
            num_tokens = mask.sum().to(torch.int)
            return loss * num_tokens, num_tokens, {}  # the schedule divides by num_tokens again
        return loss_func
    return make


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: (p.main_grad if hasattr(p, "main_grad") else p.grad).clone() for n, p in model.named_parameters()}


def _wrap_ddp(model, distributed_optimizer):
    ddp_config = DistributedDataParallelConfig(
        use_distributed_optimizer=distributed_optimizer, grad_reduce_in_fp32=True
    )
    return DistributedDataParallel(model.config, ddp_config, model)


def check_layout(nan_at=()):
    """Run in every rank: all checks for the current TP/PP/DP layout (see the module docstring)."""
    dp_group = ps.get_data_parallel_group()
    dp_size = ps.get_data_parallel_world_size()
    dp_rank = ps.get_data_parallel_rank()
    last_stage = ps.is_pipeline_last_stage()
    group_batches = make_batches(NUM_MICRO, dp_size * MICRO)
    local_batches = [rank_slice(b, dp_rank, MICRO) for b in group_batches]

    # Record what the loss under test used: the weights, the token losses, the report.
    used_weights, token_losses, reports = [], [], []
    real_dp_sample_weights = loss_mod.dp_sample_weights

    def recording_dp_sample_weights(losses, **kw):
        out = real_dp_sample_weights(losses, **kw)
        used_weights.append(out.weights.clone())
        return out

    micro_index = iter(range(NUM_MICRO))

    def reweighted_loss_func(batch):
        idx = next(micro_index)

        def loss_func(output_tensor):
            token_losses.append(output_tensor.detach().clone())
            for micro, sample in nan_at:
                if micro == idx and sample // MICRO == dp_rank:
                    # Addition keeps the backward clean: d(x + nan_mask)/dx = 1.
                    bad = torch.zeros_like(output_tensor)
                    bad[sample % MICRO, 0] = float("nan")
                    output_tensor = output_tensor + bad
            boundary = loss_mod.SampleLoss(loss_mod.ReweightConfig("linupper", r=R), dp_group)
            out = boundary.loss_func(batch["loss_mask"])(output_tensor)
            assert torch.isfinite(out[0]), "a non-finite sample must not make the loss non-finite"
            reports.append(out[2])
            return out
        return loss_func

    model = _wrap_ddp(build_gpt(), distributed_optimizer=False)
    loss_mod.dp_sample_weights = recording_dp_sample_weights
    try:
        _run_schedule(model, local_batches, reweighted_loss_func)
    finally:
        loss_mod.dp_sample_weights = real_dp_sample_weights
    finalize_model_grads([model])
    got = _grads(model.module)

    reference = build_gpt()
    _run_schedule(reference, group_batches, _reference_loss_func(nan_at, iter(range(NUM_MICRO))))
    expected = _grads(reference)
    for name, g in got.items():
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, expected[name], rtol=1e-5, atol=1e-7, msg=name)

    if last_stage:
        tp_group = ps.get_tensor_model_parallel_group()
        for micro, (weights, tokens) in enumerate(zip(used_weights, token_losses)):
            # TP ranks must agree on the per-token losses (megatron reduces them over TP).
            copies = [torch.empty_like(tokens) for _ in range(ps.get_tensor_model_parallel_world_size())]
            torch.distributed.all_gather(copies, tokens, group=tp_group)
            for copy in copies:
                assert torch.equal(copy, tokens)
            # The weights equal those of the concatenated group computed in one process.
            everyone = [torch.empty_like(tokens) for _ in range(dp_size)]
            torch.distributed.all_gather(everyone, tokens, group=dp_group)
            mask = group_batches[micro]["loss_mask"]
            group_losses = (torch.cat(everyone) * mask).sum(1) / mask.sum(1)
            for m, sample in nan_at:
                if m == micro:
                    group_losses[sample] = float("nan")
            torch.testing.assert_close(weights, sample_weights(group_losses, "linupper", R), rtol=1e-6, atol=0)
        local_nan = sum(1 for _, sample in nan_at if sample // MICRO == dp_rank)
        assert sum(rep["nonfinite"][0] for rep in reports) == local_nan
        assert all(rep["ess"][0] < 1 for rep in reports)  # linupper at r=0.5 is not uniform
    else:
        assert not used_weights  # only the last pipeline stage computes weights
    return expected


def check_uniform_is_stock():
    """Run in every rank: ``uniform`` gradients equal the stock masked-mean loss's, bit for bit."""
    dp_group = ps.get_data_parallel_group()
    dp_rank = ps.get_data_parallel_rank()
    batches = [rank_slice(b, dp_rank, MICRO) for b in make_batches(NUM_MICRO, ps.get_data_parallel_world_size() * MICRO)]
    config = loss_mod.ReweightConfig("uniform")
    grads = []
    for loss_func_for in (
        _stock_loss_func,
        lambda batch: loss_mod.SampleLoss(config, dp_group).loss_func(batch["loss_mask"]),
    ):
        model = _wrap_ddp(build_gpt(), distributed_optimizer=False)
        _run_schedule(model, batches, loss_func_for)
        finalize_model_grads([model])
        grads.append(_grads(model.module))
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def check_optimizer_step(expected, distributed_optimizer):
    """Run in every rank: megatron-core's (distributed) Adam applies exactly the reweighted gradients.

    ``adam_eps`` = 1 makes the first step ``lr * g / (|g| + 1)``: sensitive to the gradient's scale
    (with a tiny eps it would be ``lr * sign(g)``). The reference is torch's AdamW on ``expected``.
    """
    model = _wrap_ddp(build_gpt(), distributed_optimizer)
    config = OptimizerConfig(
        optimizer="adam", lr=LR, weight_decay=0.0, clip_grad=0.0, adam_eps=1.0,
        use_distributed_optimizer=distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(config, [model])
    dp_group = ps.get_data_parallel_group()
    dp_rank = ps.get_data_parallel_rank()
    batches = [rank_slice(b, dp_rank, MICRO) for b in make_batches(NUM_MICRO, ps.get_data_parallel_world_size() * MICRO)]
    rw = loss_mod.SampleLoss(loss_mod.ReweightConfig("linupper", r=R), dp_group)
    model.zero_grad_buffer()
    optimizer.zero_grad()
    _run_schedule(model, batches, lambda batch: rw.loss_func(batch["loss_mask"]))
    finalize_model_grads([model])
    update_ok, _, _ = optimizer.step()
    assert update_ok

    reference = build_gpt()
    for name, p in reference.named_parameters():
        p.grad = expected[name]
    torch.optim.AdamW(reference.parameters(), lr=LR, eps=1.0, weight_decay=0.0).step()
    stepped = dict(reference.named_parameters())
    for name, p in model.module.named_parameters():
        torch.testing.assert_close(p.detach(), stepped[name].detach(), rtol=1e-5, atol=1e-7, msg=name)


def check_all(nan_at, distributed_optimizer):
    """Run in every rank: every check of this layout, in one launch."""
    check_layout(nan_at)
    check_uniform_is_stock()
    check_optimizer_step(check_layout(), distributed_optimizer)


@pytest.mark.parametrize(
    "world_size,tp,pp,nan_at,distributed_optimizer",
    [
        (2, 1, 1, [(0, 1), (1, 3)], True),
        (4, 2, 1, [(1, 0)], True),
        (4, 1, 2, [(0, 2)], False),
    ],
    ids=["dp2", "dp2xtp2", "dp2xpp2"],
)
def test_reweighted_loss_in_layout(run_distributed, world_size, tp, pp, nan_at, distributed_optimizer):
    run_distributed(
        check_all, world_size, tp=tp, pp=pp, nan_at=nan_at, distributed_optimizer=distributed_optimizer
    )
