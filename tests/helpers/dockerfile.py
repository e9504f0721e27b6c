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
# checkable without the image; see tests/scripts/test_dockerfile.py's docstring): torch, numpy,
# packaging, and what torch itself requires (the base's torch imports, so they are there). The
# Dockerfile pins typing-extensions anyway: pydantic needs a newer one than torch.
BASE_IMAGE_PROVIDES = {"torch", "numpy", "packaging", "filelock", "fsspec", "jinja2", "networkx", "sympy",
                       "setuptools"}
# The Python of the NGC PyTorch bases (Ubuntu 24.04's; 25.11 and 26.06 alike), for the markers of
# requirements-cpu.txt, setup.py and the pinned packages' own requirements.
IMAGE_PYTHON = "3.12"
IMAGE_MARKERS = {"python_version": IMAGE_PYTHON, "python_full_version": IMAGE_PYTHON + ".3", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                 "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
# The image's two stacks: the megatron-core each installs -> the build arguments that select it
# (none: the default), and the Python of the CPU stack (make test) that tests that megatron-core.
STACKS = {
    "0.19.2": {"build_args": {}, "tested_on": "3.12"},
    "0.16.1": {"build_args": {"BASE_IMAGE": "nvcr.io/nvidia/pytorch:25.11-py3", "MEGATRON_CORE": "0.16.1"},
               "tested_on": "3.11"},
}


def _joined_lines() -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def build_args(overrides: dict | None = None) -> dict:
    """The value of every ``ARG`` (its default, or ``overrides``' as ``--build-arg`` gives it)."""
    values = {}
    for line in _joined_lines():
        op, _, rest = line.partition(" ")
        if op.upper() == "ARG":
            name, _, default = rest.strip().partition("=")
            values.setdefault(name, default)
    unknown = set(overrides or {}) - set(values)
    assert not unknown, f"no ARG {unknown} in the Dockerfile"
    return {**values, **(overrides or {})}


def expand(text: str, args: dict) -> str:
    """``${NAME}`` and ``$NAME`` of a build argument replaced by its value (as Docker and the RUN shell do)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def instructions(overrides: dict | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined, comments dropped and the build
    arguments (defaults, or ``overrides``) expanded, except in the ``ARG`` lines themselves."""
    args = build_args(overrides)
    out = []
    for line in _joined_lines():
        op, _, rest = line.partition(" ")
        op = op.upper()
        out.append((op, rest.strip() if op == "ARG" else expand(rest.strip(), args)))
    return out


def arguments(rest: str) -> list[str]:
    """The words of an instruction: its JSON (exec) form or its shell form."""
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def run_commands(overrides: dict | None = None) -> list[str]:
    """The commands of all RUN lines, split at ``&&``, in order."""
    return [part.strip() for op, rest in instructions(overrides) if op == "RUN" for part in rest.split("&&")]


def command_words(command: str) -> tuple[dict, list[str]]:
    """A shell command's leading ``NAME=value`` assignments (its environment) and its other words."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"\w+=.*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def pip_installs(overrides: dict | None = None) -> list[list[str]]:
    """The words after ``pip install`` of each install command."""
    words = [command_words(cmd)[1] for cmd in run_commands(overrides)]
    return [w[2:] for w in words if w[:2] == ["pip", "install"]]


def pinned_by_pip(overrides: dict | None = None) -> dict[str, str]:
    """``{name: version}`` of every ``name==version`` the RUN lines pip-install."""
    pins = {}
    for words in pip_installs(overrides):
        for word in words:
            if not word.startswith("-") and word != ".":
                req = Requirement(word)
                specs = list(req.specifier)
                assert len(specs) == 1 and specs[0].operator == "==", f"pip install {word}: not pinned"
                pins[canonicalize_name(req.name)] = specs[0].version
    return pins


def requirement_pins(text: str, python: str = IMAGE_PYTHON) -> dict[str, str]:
    """``{name: version}`` of a requirements file's ``==`` pins whose markers hold on ``python``."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**IMAGE_MARKERS, "python_version": python}):
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
