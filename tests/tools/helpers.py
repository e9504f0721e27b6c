"""Helpers shared by the data-tool tests (imported by name; kept out of conftest.py)."""

import json
import os

from tools.build_corpus import FIXTURE_DIR


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
