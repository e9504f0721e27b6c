"""Fixtures shared by every test folder; the helpers behind them live in ``tests.helpers``."""

import pytest

from tests.helpers.distributed import run_distributed as _run_distributed


@pytest.fixture
def run_distributed():
    """``run_distributed(fn, world_size, *, tp=1, pp=1, timeout=180, **kwargs)`` -> per-rank results
    (see tests/helpers/distributed.py)."""
    return _run_distributed


@pytest.fixture(scope="session")
def tokenizer_stand_ins(tmp_path_factory):
    """``{tokenizer type: build_tokenizer keywords}`` of stand-in files of every type, trained offline on real
    text (tests/helpers/tokenizer_files.py)."""
    from tests.helpers.tokenizer_files import write_tokenizer_files

    return write_tokenizer_files(str(tmp_path_factory.mktemp("tokenizers")))
