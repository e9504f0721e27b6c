"""Shared fixtures: ``run_distributed`` starts real multi-process groups (see tests/distributed.py)."""

import pytest

from distributed import run_distributed as _run_distributed


@pytest.fixture
def run_distributed():
    """``run_distributed(fn, world_size, *, tp=1, pp=1, timeout=180, **kwargs)`` -> per-rank results."""
    return _run_distributed
