"""tools/data/make_fixtures.py: excerpts end at a blank line, small documents fill a budget in hash order."""

import pytest

from tools.data.corpus_documents import Document, hash_order
from tools.data.make_fixtures import SEED, excerpt, small_documents

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_excerpt_cuts_at_the_last_blank_line_before_the_limit():
    text = "para one\n\npara two\n\npara three"
    assert excerpt(Document("x", text), max_chars=21).text == "para one\n\npara two"
    assert excerpt(Document("x", text), max_chars=100).text == text
    assert excerpt(Document("x", "no blank line at all"), max_chars=5).text == "no bl"


def test_small_documents_skip_long_ones_and_stop_at_the_budget():
    docs = [Document(f"d/{i}", "x" * n) for i, n in enumerate([5, 50, 5, 5, 5])]
    chosen = small_documents(docs, max_chars=10, budget=12)
    assert chosen == [d for d in hash_order(docs, SEED) if len(d.text) <= 10][:2]
