"""The loop's pieces in real process groups: the guarded optimizer step, exits, checkpoint markers."""

import math

import pytest
import torch

from megatron_patch.arguments import ArgumentError
from megatron_patch.checkpointing import MARKER, load_checkpoint, read_marker
from megatron_patch.data import DataParallelBatches
from megatron_patch.health import WeightHealth, WeightHealthConfig


def _tiny_args(world_size):
    from megatron_patch.arguments import parse_args, validate_args

    args = parse_args(["--model", "tiny", "--seq-length", "16", "--max-position-embeddings", "16",
                       "--vocab-size", "64", "--train-iters", "4", "--mock-data", "--tokenizer-type", "NullTokenizer",
                       "--use-distributed-optimizer"], family="llama")
    return validate_args(args, world_size)


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

    args = _tiny_args(torch.distributed.get_world_size())
    set_seeds(args.seed)
    model, optimizer, _ = build_model_and_optimizer(
        lambda a, pre_process, post_process: gpt_model_provider(a, pre_process=pre_process, post_process=post_process),
        args)
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


def test_marker_states(tmp_path):
    assert read_marker(str(tmp_path / "missing")) is None
    assert read_marker(str(tmp_path)) is None  # empty: a fresh start
    (tmp_path / "iter_0000002").mkdir()
    with pytest.raises(ArgumentError, match=f"no {MARKER}"):
        read_marker(str(tmp_path))  # an interrupted first save
    (tmp_path / MARKER).write_text("banana")
    with pytest.raises(ArgumentError, match="not an iteration"):
        read_marker(str(tmp_path))
    (tmp_path / MARKER).write_text("2")
    assert read_marker(str(tmp_path)) == 2
    (tmp_path / "iter_0000002" / "model.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ArgumentError, match="not a readable checkpoint of this project"):
        load_checkpoint(str(tmp_path), model=None, optimizer=None)  # foreign: fails before touching the model
    (tmp_path / MARKER).write_text("5")
    with pytest.raises(ArgumentError, match="iter_0000005 is missing"):
        load_checkpoint(str(tmp_path), model=None, optimizer=None)


def test_data_parallel_batches_are_contiguous_groups_and_resume():
    ranks = [list(DataParallelBatches(20, consumed_samples=4, micro_batch_size=2, dp_rank=r, dp_size=2))
             for r in range(2)]
    assert ranks[0][:2] == [[4, 5], [8, 9]] and ranks[1][:2] == [[6, 7], [10, 11]]
    assert len(ranks[0]) == len(DataParallelBatches(20, consumed_samples=4, micro_batch_size=2, dp_rank=0,
                                                    dp_size=2)) == 4
    wrapped = iter(DataParallelBatches(6, consumed_samples=0, micro_batch_size=2, dp_rank=1, dp_size=2, wrap=True))
    assert [next(wrapped) for _ in range(3)] == [[2, 3], [0, 1], [4, 5]]


def test_weight_health_warns_after_patience():
    health = WeightHealth(WeightHealthConfig(min_ess=0.5, max_weight=3.0, patience=2))
    ok = {"iteration": 1, "ess": 0.8, "max_weight": 1.5}
    bad = {"iteration": 2, "ess": 0.2, "max_weight": 1.5}
    assert health.check(dict(ok)) is None
    assert health.check(dict(bad)) is None  # one bad interval is noise
    record = dict(bad, iteration=3, max_weight=4.0)
    warning = health.check(record)
    assert record["weight_collapse"] == 1
    assert "ESS/N 0.200 < 0.5" in warning and "N x max weight 4.00 > 3.0" in warning and "--reweight-r" in warning
    assert health.check(dict(ok)) is None and health.bad_intervals == 0
    assert health.check({"iteration": 5, "ess": None}) is None  # uniform warm-up: nothing to judge
    with pytest.raises(ValueError, match="--weight-collapse-min-ess"):
        WeightHealthConfig(min_ess=2.0)


def exit_reasons_in_rank():
    """A SIGTERM that reaches only rank 1 stops both ranks; so does the duration limit."""
    import os
    import signal

    from megatron_patch.exits import ExitConditions

    exits = ExitConditions(signal_handler=True, duration_in_mins=None, interval=None)
    first = exits.reason(1)
    if torch.distributed.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    second = exits.reason(2)
    timed = ExitConditions(signal_handler=False, duration_in_mins=0.0, interval=None).reason(3)
    every = ExitConditions(signal_handler=False, duration_in_mins=None, interval=2)
    return first, second, timed, every.reason(3), every.reason(4)


def test_exit_conditions_agree_across_ranks(run_distributed):
    for first, second, timed, odd, even in run_distributed(exit_reasons_in_rank, world_size=2):
        assert first is None and second == "received SIGTERM (--exit-signal-handler)"
        assert "--exit-duration-in-mins 0.0" in timed
        assert odd is None and even == "iteration 4 (--exit-interval 2)"
