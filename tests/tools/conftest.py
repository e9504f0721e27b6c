"""Shared fixtures for the tool tests: a small JSONL of real text, a tokenizer trained on it, no network."""

import subprocess

import pytest

from tests.tools.helpers import fixture_texts, write_jsonl
from tools.train_tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def documents_jsonl(tmp_path_factory):
    """A JSONL file of real documents (plays, speeches, code), one ``{"text": ...}`` per line."""
    return write_jsonl(tmp_path_factory.mktemp("docs") / "docs.jsonl", [{"text": t} for t in fixture_texts()])


@pytest.fixture(scope="session")
def tokenizer_model(tmp_path_factory, documents_jsonl):
    """A 512-piece BPE model trained on ``documents_jsonl``."""
    path = str(tmp_path_factory.mktemp("tok") / "tok.model")
    train_tokenizer([documents_jsonl], path, vocab_size=512, num_threads=1)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any ``subprocess.run`` (pip download is the tools' only network access) fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(subprocess, "run", forbidden)
