"""Reading the Dockerfile and .dockerignore without Docker (for tests/scripts/test_dockerfile.py)."""

import contextlib
import json
import os
import posixpath
import re
import runpy
import shlex
from pathlib import Path
from unittest import mock

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# What the NGC PyTorch base brings and the Dockerfile therefore does not pip-install (not
# checkable without the image; see the module docstring).
BASE_IMAGE_PROVIDES = {"torch", "numpy", "packaging"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def arguments(rest: str) -> list[str]:
    """The words of an instruction: its JSON (exec) form or its shell form."""
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def run_commands() -> list[str]:
    """The commands of all RUN lines, split at ``&&``, in order."""
    return [part.strip() for op, rest in instructions() if op == "RUN" for part in rest.split("&&")]


def pip_installs() -> list[list[str]]:
    """The words after ``pip install`` of each install command."""
    return [shlex.split(cmd)[2:] for cmd in run_commands() if shlex.split(cmd)[:2] == ["pip", "install"]]


def pinned_by_pip() -> dict[str, str]:
    """``{name: version}`` of every ``name==version`` the RUN lines pip-install."""
    pins = {}
    for words in pip_installs():
        for word in words:
            if not word.startswith("-") and word != ".":
                req = Requirement(word)
                specs = list(req.specifier)
                assert len(specs) == 1 and specs[0].operator == "==", f"pip install {word}: not pinned"
                pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def requirement_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins.update({canonicalize_name(req.name): s.version for s in req.specifier if s.operator == "=="})
    return pins


def setup_kwargs() -> dict:
    """The arguments setup.py passes to ``setup()`` (run with ``setup`` replaced, in the repository)."""
    captured = {}
    with mock.patch("setuptools.setup", lambda **kwargs: captured.update(kwargs)), contextlib.chdir(REPO):
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    assert captured, "setup.py did not call setup()"
    return captured


# ---------------------------------------------------------------- .dockerignore, Docker's rules


def _pattern_regex(pattern: str) -> str:
    """Docker's .dockerignore pattern (Go's filepath.Match per path segment, ``**`` for any number
    of segments) as a regular expression over a context-relative path with ``/`` separators."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out, i = out + "(?:.*/)?", i + 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            out, i = out + "[" + ("^" + body[1:] if body.startswith("^") else body) + "]", end
        elif c == "\\" and i + 1 < len(pattern):
            out, i = out + re.escape(pattern[i + 1]), i + 1
        else:
            out += re.escape(c)
        i += 1
    return out


class DockerIgnore:
    """A path is excluded when the last pattern that matches it or one of its parent folders is
    not a ``!`` exception (as the Docker builder decides what the context sends)."""

    def __init__(self, text: str):
        self.rules = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = posixpath.normpath(line[1:].strip() if negate else line).lstrip("/")
            self.rules.append((re.compile(_pattern_regex(pattern)), negate))

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for regex, negate in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                result = not negate
        return result

    def files(self, root: Path, below: str = "") -> list[str]:
        """The context's files under ``below`` (relative paths), excluded folders not entered."""
        prune = not any(negate for _, negate in self.rules)
        out = []
        for folder, dirs, files in os.walk(root / below):
            rel = Path(folder).relative_to(root).as_posix()
            rel = "" if rel == "." else rel + "/"
            dirs[:] = sorted(d for d in dirs if not (prune and self.excluded(rel + d)))
            out += [rel + f for f in sorted(files) if not self.excluded(rel + f)]
        return out
