"""Shared fixtures for the data tools: a small JSONL of real text and a tokenizer trained on it."""

import json
import os

import pytest

from tools.build_corpus import FIXTURE_DIR
from tools.train_tokenizer import train_tokenizer


def fixture_texts():
    """The texts of the committed books, speeches and code fixtures, in file order."""
    texts = []
    for name in ("books", "speeches", "code"):
        with open(os.path.join(FIXTURE_DIR, f"{name}.jsonl"), encoding="utf-8") as handle:
            texts += [json.loads(line)["text"] for line in handle]
    return texts


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return str(path)


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
