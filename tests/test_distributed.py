"""The multi-process launcher itself: results per rank, parallel state, and failures that surface."""

import os
import time

import pytest
import torch
from megatron.core import parallel_state as ps


def report_layout(tag):
    return (tag, torch.distributed.get_rank(), ps.get_tensor_model_parallel_world_size(),
            ps.get_pipeline_model_parallel_rank(), ps.get_data_parallel_rank())


def test_results_come_back_by_rank(run_distributed):
    # megatron-core's rank order is TP fastest, then DP, then PP: rank = tp + TP * (dp + DP * pp)
    assert run_distributed(report_layout, 4, tp=2, tag="a") == [
        ("a", 0, 2, 0, 0), ("a", 1, 2, 0, 0), ("a", 2, 2, 0, 1), ("a", 3, 2, 0, 1)]
    assert run_distributed(report_layout, 4, pp=2, tag="b") == [
        ("b", 0, 1, 0, 0), ("b", 1, 1, 0, 1), ("b", 2, 1, 1, 0), ("b", 3, 1, 1, 1)]


def fail_on_rank_one():
    if torch.distributed.get_rank() == 1:
        raise ValueError("boom from rank one")
    torch.distributed.barrier()  # rank 0 would wait here forever: the launcher must not


def test_a_failing_rank_raises_with_its_traceback(run_distributed):
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)rank 1 ---.*ValueError: boom from rank one"):
        run_distributed(fail_on_rank_one, 2)
    assert time.monotonic() - start < 30


def die_on_rank_one(code):
    if torch.distributed.get_rank() == 1:
        os._exit(code)  # no traceback, no result: as a rank killed by the OOM killer
    torch.distributed.barrier()


def test_a_rank_that_dies_is_reported_with_its_exit_code(run_distributed):
    start = time.monotonic()
    # Rank 0's barrier fails too (gloo: connection reset by its peer); the dead rank is named beside it.
    with pytest.raises(RuntimeError, match=r"(?s)--- rank 1 ---\nexited with code 3 without a result$"):
        run_distributed(die_on_rank_one, 2, code=3)
    assert time.monotonic() - start < 30
