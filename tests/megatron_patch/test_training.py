"""The loop's guarded optimizer step in real process groups."""

import math

import torch

from tests.helpers.config import tiny_config


def _snapshot(model, optimizer):
    params = [p.detach().clone() for p in model.parameters()]
    moments = [s["exp_avg"].clone() for sub in optimizer.chained_optimizers
               for s in sub.optimizer.state.values() if "exp_avg" in s]
    return params, moments


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def guarded_step_in_rank():
    """Finite grads update; NaN grads or an all-zero gradient (no finite sample) leave everything as is."""
    from megatron_patch.distributed import set_seeds
    from megatron_patch.model import gpt_model_provider
    from megatron_patch.training import build_model_and_optimizer, optimizer_step

    config = tiny_config("--use-distributed-optimizer", world_size=torch.distributed.get_world_size())
    set_seeds(config.training.seed)
    model, optimizer, _ = build_model_and_optimizer(gpt_model_provider, config)
    out = {}
    for case, value in (("finite", 0.01), ("nan", math.nan), ("inf", math.inf), ("zero", 0.0), ("again", 0.01)):
        model.zero_grad_buffer()
        optimizer.zero_grad()
        for p in model.parameters():
            p.main_grad.fill_(value)
        before = _snapshot(model, optimizer)
        updated, norm = optimizer_step(optimizer, clip_grad=1.0)
        after = _snapshot(model, optimizer)
        out[case] = (updated, norm, _same(before[0], after[0]), _same(before[1], after[1]))
    return out


def test_optimizer_step_skips_unusable_gradients(run_distributed):
    results = run_distributed(guarded_step_in_rank, world_size=2)
    for out in results:
        updated, norm, same_params, _ = out["finite"]
        assert updated and math.isfinite(norm) and norm > 0 and not same_params
        for case in ("nan", "inf", "zero"):
            updated, norm, same_params, same_moments = out[case]
            assert not updated and same_params and same_moments, case
        assert math.isnan(out["nan"][1]) and math.isinf(out["inf"][1]) and out["zero"][1] == 0.0
        assert out["again"][0]  # a skipped step leaves the optimizer usable
    assert results[0]["finite"][1] == results[1]["finite"][1]  # every rank decides on the same norm
