"""Fixtures shared by every test folder; the helpers behind them live in ``tests.helpers``."""

import pytest

from tests.helpers.distributed import run_distributed as _run_distributed


@pytest.fixture
def run_distributed():
    """``run_distributed(fn, world_size, *, tp=1, pp=1, timeout=180, **kwargs)`` -> per-rank results
    (see tests/helpers/distributed.py)."""
    return _run_distributed
