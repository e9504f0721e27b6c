"""--domain-weights: the paper's tables by name over per-domain prefixes, into the resolved blend; a missing or
extra domain is one error line."""

import pytest

from megatron_patch.domains import DOMAIN_WEIGHTS, SLIMPAJAMA_DOMAINS, domain_name, weighted_blend
from megatron_patch.errors import ArgumentError
from tests.helpers.config import tiny_config

PREFIXES = [f"/data/sp/{d}_train_text_document" for d in ("wikipedia", "cc", "arxiv", "book", "c4", "github",
                                                           "stackexchange")]


def test_the_tables_are_the_papers():
    # Sow et al., the DoGE / DoReMi domain-weight table (GPT-2 large, SlimPajama), typed in again here.
    doge = dict(arxiv=0.088, book=0.045, cc=0.269, c4=0.214, github=0.070, stackexchange=0.166, wikipedia=0.148)
    doremi = dict(arxiv=0.04235, book=0.08201, cc=0.381, c4=0.1141, github=0.0654, stackexchange=0.0847,
                  wikipedia=0.2305)
    assert DOMAIN_WEIGHTS["doge"] == doge and DOMAIN_WEIGHTS["doremi"] == doremi
    assert DOMAIN_WEIGHTS["uniform"] == {d: 1 / 7 for d in doge} and set(SLIMPAJAMA_DOMAINS) == set(doge)
    assert sum(doge.values()) == pytest.approx(1.0) and sum(doremi.values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", ["uniform", "doge", "doremi"])
def test_each_prefix_gets_its_domains_weight(name):
    blend = weighted_blend(name, PREFIXES)
    pairs = dict(zip(blend[1::2], map(float, blend[0::2])))
    assert pairs == {p: DOMAIN_WEIGHTS[name][domain_name(p)] for p in PREFIXES}


def test_the_resolved_config_holds_the_weighted_blend():
    config = tiny_config("--data-path", *PREFIXES, "--domain-weights", "doge")
    weights = dict(zip(config.data.data_path[1::2], map(float, config.data.data_path[0::2])))
    assert weights["/data/sp/cc_train_text_document"] == 0.269 and len(weights) == 7


@pytest.mark.parametrize("prefixes, expected", [
    (PREFIXES[:-1], "--domain-weights doge: --data-path has no prefix of domain(s) stackexchange; pass one prefix"),
    ([*PREFIXES, "/data/wiki_train_text_document"], "no weight for --data-path /data/wiki_train_text_document (wiki)"),
    ([*PREFIXES, "/other/cc_train_text_document"], "two prefixes of domain cc"),
    (["0.5", PREFIXES[0]], "--domain-weights doge sets the weights: give --data-path prefixes only"),
    ([], "--domain-weights doge needs --data-path with one prefix per domain"),
])
def test_missing_or_extra_domains_are_one_line(prefixes, expected):
    with pytest.raises(ArgumentError) as err:
        weighted_blend("doge", prefixes)
    assert expected in str(err.value) and "\n" not in str(err.value)
