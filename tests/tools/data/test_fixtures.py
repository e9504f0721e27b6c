"""tools/data/fixtures: the committed corpus fixtures are package data, complete and documented."""

import json
import os

import pytest

from tools.data.fixtures import FIXTURE_DIR, NAMES, fixture_path, read_fixture

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_every_fixture_file_is_named_and_documented():
    files = sorted(f for f in os.listdir(FIXTURE_DIR) if f.endswith(".jsonl"))
    assert files == sorted(f"{name}.jsonl" for name in NAMES)
    notice = open(os.path.join(FIXTURE_DIR, "NOTICE"), encoding="utf-8").read()
    assert all(f in notice for f in files)


def test_read_fixture_gives_the_file_documents_in_order():
    for name in NAMES:
        with open(fixture_path(name), encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        documents = read_fixture(name)
        assert [(d.id, d.text) for d in documents] == [(r["id"], r["text"]) for r in records]
        assert documents and all(d.id.startswith(("books/", "speeches/", "code/", "math/")) for d in documents)
