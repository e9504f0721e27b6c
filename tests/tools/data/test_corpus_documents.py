"""tools/data/corpus_documents.py: the seeded order, the byte caps and the JSONL round trip."""

import hashlib
import os

import pytest

from tools.data.corpus_documents import Document, hash_order, read_jsonl, size, take_bytes, text_bytes, write_jsonl

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)

DOCS = [Document(f"d/{i}", "\u00e9" * i) for i in range(1, 6)]  # 2, 4, ..., 10 bytes


def test_sizes_are_utf8_bytes():
    assert [size(d) for d in DOCS] == [2, 4, 6, 8, 10] and text_bytes(DOCS) == 30


def test_hash_order_is_the_sha256_order_of_seed_and_id():
    expected = sorted(DOCS, key=lambda d: hashlib.sha256(f"7:{d.id}".encode()).hexdigest())
    assert hash_order(DOCS, 7) == expected == hash_order(list(reversed(DOCS)), 7)
    assert hash_order(DOCS, 7) != hash_order(DOCS, 8)


def test_take_bytes_stops_before_the_cap_but_keeps_a_minimum():
    assert take_bytes(DOCS, 12) == DOCS[:3]  # 2 + 4 + 6
    assert take_bytes(DOCS, 11) == DOCS[:2]
    assert take_bytes(DOCS, 1) == DOCS[:1] and take_bytes(DOCS, 1, minimum=2) == DOCS[:2]
    assert take_bytes(DOCS, None) == DOCS


def test_jsonl_round_trip(tmp_path):
    path = str(tmp_path / "d.jsonl")
    write_jsonl(path, DOCS)
    assert read_jsonl(path) == DOCS and os.listdir(tmp_path) == ["d.jsonl"]
    assert open(path, encoding="utf-8").readline() == '{"id": "d/1", "text": "\u00e9"}\n'
