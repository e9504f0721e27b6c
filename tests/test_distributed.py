"""The multi-process launcher itself: results per rank, parallel state, and failures that surface."""

import time

import pytest
import torch
from megatron.core import parallel_state as ps


def report_layout():
    return (torch.distributed.get_rank(), ps.get_tensor_model_parallel_world_size(), ps.get_data_parallel_rank())


def test_results_come_back_by_rank(run_distributed):
    assert run_distributed(report_layout, 4, tp=2) == [(0, 2, 0), (1, 2, 0), (2, 2, 1), (3, 2, 1)]


def fail_on_rank_one():
    if torch.distributed.get_rank() == 1:
        raise ValueError("boom from rank one")
    torch.distributed.barrier()  # rank 0 would wait here forever: the launcher must not


def test_a_failing_rank_raises_with_its_traceback(run_distributed):
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)rank 1 ---.*ValueError: boom from rank one"):
        run_distributed(fail_on_rank_one, 2)
    assert time.monotonic() - start < 30
