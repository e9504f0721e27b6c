"""Corpus documents: the ``Document`` record, a seeded order, byte caps and JSONL output.

Shared by the corpus builder (``tools/build_corpus.py``), the archive readers
(:mod:`tools.data.corpus_sources`) and the fixtures maker (:mod:`tools.data.make_fixtures`).
"""

import dataclasses
import hashlib
import json
from typing import List, Optional, Sequence

from megatron_patch.files import write_atomically


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: a stable id (``domain/name``) and its text."""

    id: str
    text: str


def size(document: Document) -> int:
    """The document's text in UTF-8 bytes."""
    return len(document.text.encode("utf-8"))


def text_bytes(documents: Sequence[Document]) -> int:
    return sum(map(size, documents))


def hash_order(documents: Sequence[Document], seed: int) -> List[Document]:
    """A deterministic shuffle: by sha256 of the seed and the document id."""
    return sorted(documents, key=lambda d: hashlib.sha256(f"{seed}:{d.id}".encode("utf-8")).digest())


def take_bytes(documents: Sequence[Document], max_bytes: Optional[int], minimum: int = 1) -> List[Document]:
    """The leading documents whose total stays within ``max_bytes`` (at least ``minimum`` of them)."""
    taken, total = [], 0
    for document in documents:
        if max_bytes is not None and total + size(document) > max_bytes and len(taken) >= minimum:
            break
        taken.append(document)
        total += size(document)
    return taken


def write_jsonl(path: str, documents: Sequence[Document]) -> None:
    """``{"id": ..., "text": ...}`` per line, written atomically."""
    lines = (json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) + "\n" for d in documents)
    write_atomically(path, "".join(lines))


def read_jsonl(path: str) -> List[Document]:
    """The documents of a file written by :func:`write_jsonl`."""
    with open(path, encoding="utf-8") as handle:
        return [Document(record["id"], record["text"]) for record in map(json.loads, handle)]
