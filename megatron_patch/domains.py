"""Domains of a blend: the display name of a dataset prefix, and the paper's domain weights by name.

``--domain-weights NAME`` with ``--data-path`` prefixes only (one per domain) sets each prefix's
sampling weight from the table below by the prefix's domain name (:func:`domain_name`), so
``--data-path OUT/arxiv_train_text_document ... --domain-weights doge`` is the paper's DoGE mixture.
The resolved configuration then holds the explicit ``w1 p1 w2 p2 ...`` blend.
"""

import os
import re

from .errors import ArgumentError

# SlimPajama's seven domains, as the paper names them.
SLIMPAJAMA_DOMAINS = ("arxiv", "book", "cc", "c4", "github", "stackexchange", "wikipedia")

# Sow et al. (ICLR 2025), the table of static domain weights used with LinUpper on the GPT-2 large
# model on SlimPajama: DoGE (Fan et al.) and DoReMi (Xie et al.) weights per domain, as printed there.
# "uniform" is the paper's baseline mixture, 1/7 each. The DoReMi column sums to 1.00006 as printed;
# Megatron normalises the weights, so they are used as they are.
DOMAIN_WEIGHTS = {
    "uniform": {domain: 1 / 7 for domain in SLIMPAJAMA_DOMAINS},
    "doge": {"arxiv": 0.088, "book": 0.045, "cc": 0.269, "c4": 0.214, "github": 0.070, "stackexchange": 0.166,
             "wikipedia": 0.148},
    "doremi": {"arxiv": 0.04235, "book": 0.08201, "cc": 0.381, "c4": 0.1141, "github": 0.0654,
               "stackexchange": 0.0847, "wikipedia": 0.2305},
}


def domain_name(prefix: str) -> str:
    """A short display name for a dataset prefix: ``data/wiki_train_text_document`` -> ``wiki``."""
    name = os.path.basename(prefix)
    name = re.sub(r"_text_document$", "", name)
    return re.sub(r"_(train|valid|validation|test)$", "", name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def weighted_blend(name: str, tokens: list[str] | None) -> list[str]:
    """``--data-path`` prefixes -> ``[w1, p1, w2, p2, ...]`` with the weights of table ``name``.

    Every domain of the table needs exactly one prefix, and every prefix a domain of the table;
    otherwise one :class:`ArgumentError` line says which are missing or extra.
    """
    weights = DOMAIN_WEIGHTS[name]
    flag = f"--domain-weights {name}"
    if not tokens:
        raise ArgumentError(f"{flag} needs --data-path with one prefix per domain ({', '.join(weights)})")
    if _is_number(tokens[0]):
        raise ArgumentError(f"{flag} sets the weights: give --data-path prefixes only, without weights")
    by_domain = {}
    for prefix in tokens:
        domain = domain_name(prefix)
        if domain in by_domain:
            raise ArgumentError(f"{flag}: --data-path has two prefixes of domain {domain} "
                                f"({by_domain[domain]}, {prefix}); give one per domain")
        by_domain[domain] = prefix
    extra = [f"{p} ({domain_name(p)})" for p in tokens if domain_name(p) not in weights]
    if extra:
        raise ArgumentError(f"{flag}: no weight for --data-path {', '.join(extra)}; its domains are "
                            f"{', '.join(weights)} (the prefix's name without _train_text_document)")
    missing = [d for d in weights if d not in by_domain]
    if missing:
        raise ArgumentError(f"{flag}: --data-path has no prefix of domain(s) {', '.join(missing)}; "
                            f"pass one prefix for each of {', '.join(weights)}")
    return [x for domain, weight in weights.items() for x in (repr(weight), by_domain[domain])]
