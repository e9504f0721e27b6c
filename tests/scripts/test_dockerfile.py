"""The Dockerfile, checked without Docker.

There is no Docker daemon on our machines or in CI, so the image is never built here: nothing
below proves that ``docker build`` succeeds, that the NGC base tags still exist, or that a base
image ships what the Dockerfile expects of it (torch and what it requires, numpy, packaging:
``BASE_IMAGE_PROVIDES``, because every ``pip install`` runs with ``--no-deps``; Python 3.12), nor
that its Transformer Engine is the one the Dockerfile's comment names. What is checked is
everything that does not need the base image, for both stacks the build arguments select
(``STACKS``: megatron-core 0.19.2 on NGC 26.06 by default, ``MEGATRON_CORE=0.16.1`` with
``BASE_IMAGE=...25.11-py3``):

- the base is an NGC PyTorch image pinned by a dated tag, given as ``ARG BASE_IMAGE``; the only
  build arguments are the base and the megatron-core version, and the header shows the 0.16.1 build;
- every ``pip install`` pin equals requirements-cpu.txt's (megatron-core's: that of the CPU stack
  which tests it) and meets setup.py's requirements; every requirement of setup.py and of the
  pinned packages is installed at a version it accepts, or comes with the base; nothing is
  pinned that nothing needs;
- every ``COPY`` source exists and is not excluded by .dockerignore;
- the build is replayed on this machine, in the CPU stack with the image's megatron-core (``make
  test`` runs both stacks; the other image is skipped, saying so): the ``COPY`` lines copy the
  build context (the working tree minus .dockerignore, with Docker's pattern rules) into a
  temporary image tree, ``pip install .`` runs there (into a target folder, not this
  environment), and the ``python`` checks of the ``RUN`` lines and the ``CMD`` run in the copied
  ``WORKDIR`` with this environment's Python (its pinned packages are the image's versions:
  checked first). So the copy holds every package, module and data file setup.py installs and
  every first-party module they import;
- no secrets, and a small build context.
"""

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from megatron_patch.version_guard import is_supported
from tests.helpers.dockerfile import (  # noqa: F401 - the Dockerfile's readers
    BASE_IMAGE_PROVIDES, DOCKERFILE, IMAGE_MARKERS, IMAGE_PYTHON, REPO, STACKS, DockerIgnore, arguments, build_args,
    command_words, instructions, pinned_by_pip, pip_installs, requirement_pins, setup_kwargs,
)

IGNORE = DockerIgnore((REPO / ".dockerignore").read_text())
REQUIREMENTS = (REPO / "requirements-cpu.txt").read_text()


def test_dockerignore_follows_dockers_rules():
    rules = DockerIgnore("data\n**/__pycache__\n*.egg-info\n**/*.key\nlogs/*\n!logs/keep.txt\n")
    assert rules.excluded("data") and rules.excluded("data/x/y.bin") and not rules.excluded("tools/data/a.py")
    assert rules.excluded("__pycache__/a.pyc") and rules.excluded("megatron_patch/__pycache__/a.pyc")
    assert rules.excluded("x.egg-info/PKG-INFO") and not rules.excluded("sub/x.egg-info")  # * stays in a segment
    assert rules.excluded("id.key") and rules.excluded("a/b/id.key") and not rules.excluded("a/b/id.keys")
    assert rules.excluded("logs/run.txt") and not rules.excluded("logs/keep.txt")


# ---------------------------------------------------------------- the Dockerfile's text, both stacks


def base_image(overrides: dict | None = None) -> str:
    return next(rest.split()[0] for op, rest in instructions(overrides) if op == "FROM")


def installed_megatron_core() -> str:
    return metadata.version("megatron-core").split("+")[0]


@pytest.mark.parametrize("stack", list(STACKS))
def test_base_is_ngc_pytorch_pinned_by_tag(stack):
    ops = instructions()
    assert ops[0][0] == "ARG" and ops[0][1].startswith("BASE_IMAGE=") and ops[1][0] == "FROM"
    assert re.search(r"(?m)^FROM \$\{BASE_IMAGE\}$", DOCKERFILE.read_text())
    image = base_image(STACKS[stack]["build_args"])
    m = re.fullmatch(r"nvcr\.io/nvidia/pytorch:(\d{2})\.(\d{2})-py3", image)
    assert m, image  # a dated NGC tag, never latest or an unpinned name
    assert 1 <= int(m.group(2)) <= 12
    assert sum(op == "FROM" for op, _ in ops) == 1


def test_the_build_arguments_select_the_two_stacks():
    """The default builds megatron-core 0.19.2 on NGC 26.06; the base and the megatron-core version
    are the only build arguments, megatron-core's pin is the argument's, and the header says how to
    build the 0.16.1 image."""
    assert build_args() == {"BASE_IMAGE": "nvcr.io/nvidia/pytorch:26.06-py3", "MEGATRON_CORE": "0.19.2"}
    assert STACKS[build_args()["MEGATRON_CORE"]]["build_args"] == {}
    header = " ".join(line.lstrip("# ").rstrip("\\ ") for line in DOCKERFILE.read_text().splitlines()
                      if line.startswith("#"))
    for stack, spec in STACKS.items():
        assert pinned_by_pip(spec["build_args"])["megatron-core"] == stack
        assert is_supported(stack), f"megatron_patch/version_guard.py does not support megatron-core {stack}"
        flags = " ".join(f"--build-arg {name}={value}" for name, value in spec["build_args"].items())
        assert flags in header, f"the Dockerfile's header does not show the build of the {stack} image: {flags}"


@pytest.mark.parametrize("stack", list(STACKS))
def test_pins_match_requirements_and_setup(stack):
    """Each pin is requirements-cpu.txt's for the Python of the CPU stack that tests this
    megatron-core (the image's Python is 3.12 for both); setup.py's requirements there are met."""
    pins, python = pinned_by_pip(STACKS[stack]["build_args"]), STACKS[stack]["tested_on"]
    cpu = requirement_pins(REQUIREMENTS, python)
    assert pins["megatron-core"] == cpu["megatron-core"] == stack
    assert pins and all(cpu[name] == version for name, version in pins.items() if name in cpu), (pins, cpu)
    for line in setup_kwargs()["install_requires"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({**IMAGE_MARKERS, "python_version": python}):
            continue
        name = canonicalize_name(req.name)
        # --no-deps: whatever the package needs is pip-installed here, pinned, or comes with the base
        assert name in pins or name in BASE_IMAGE_PROVIDES, f"setup.py needs {line}, the image never installs it"
        if name in pins:
            assert req.specifier.contains(pins[name]), (line, pins[name])
    # every --no-deps install: the image's torch must stay as NGC built it
    installs = pip_installs(STACKS[stack]["build_args"])
    assert installs and all("--no-deps" in words for words in installs), installs
    assert not BASE_IMAGE_PROVIDES & set(pins), pins
    assert sum("." in words for words in installs) == 1, "the project itself is pip-installed once"


def _requirements(name: str) -> list[Requirement]:
    """The requirements of the installed ``name`` that hold in the image (Python 3.12 on Linux, no extras)."""
    reqs = [Requirement(line) for line in metadata.requires(name) or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(IMAGE_MARKERS)]


@pytest.mark.parametrize("stack", list(STACKS))
def test_requirements_of_the_pinned_packages_are_in_the_image(stack):
    """--no-deps skips each pinned package's own requirements (read from this environment): each
    must be pinned too, at a version it accepts, or come with the base; and every pin is needed by
    the project's pins (requirements-cpu.txt) or by what they need."""
    if installed_megatron_core() != stack:
        pytest.skip(f"read in the megatron-core {stack} stack (make test); this one has {installed_megatron_core()}")
    pins = pinned_by_pip(STACKS[stack]["build_args"])
    direct = {name for name in pins if name in requirement_pins(REQUIREMENTS, STACKS[stack]["tested_on"])}
    for name in direct:
        have = metadata.version(name).split("+")[0]
        assert have == pins[name], f"this environment has {name} {have}"
    needed, todo = set(direct), sorted(direct)
    while todo:
        name = todo.pop()
        if metadata.version(name).split("+")[0] != pins[name]:
            continue  # another version here (pip resolved a newer one since): its requirements are not read
        for req in _requirements(name):
            dep = canonicalize_name(req.name)
            assert dep in pins or dep in BASE_IMAGE_PROVIDES, f"{name} needs {req}, the image never installs it"
            if dep in pins:
                assert req.specifier.contains(pins[dep], prereleases=True), f"{name} needs {req}, image: {pins[dep]}"
                if dep not in needed:
                    needed.add(dep)
                    todo.append(dep)
    assert needed == set(pins), f"pinned but needed by nothing: {sorted(set(pins) - needed)}"


def test_copy_sources_exist_and_reach_the_build():
    copies = [arguments(rest) for op, rest in instructions() if op in ("COPY", "ADD")]
    assert copies and not any(op == "ADD" for op, _ in instructions())  # COPY only: no downloads, no unpacking
    for words in copies:
        *sources, dest = [w for w in words if not w.startswith("--")]
        assert sources and (len(sources) == 1 or dest.endswith("/")), words
        for src in sources:
            path = REPO / src
            assert path.exists(), f"COPY {src}: not in the repository"
            assert not IGNORE.excluded(src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"
            assert not path.is_dir() or IGNORE.files(REPO, src), f"COPY {src}: nothing of it reaches the build"
    ops = [op for op, _ in instructions()]
    assert "WORKDIR" in ops and "CMD" in ops and "ENTRYPOINT" not in ops


def test_no_secrets_and_a_small_context():
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?i)\b(api[_-]?key|token|password|secret|NGC_API|WANDB_API)\s*[=:]", text)  # not tiktoken==
    assert set(build_args()) == {"BASE_IMAGE", "MEGATRON_CORE"}  # no build argument carries a credential
    ignore = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv*", "data", "runs", "tests", "**/*.key", "**/.netrc", "**/.env"):
        assert entry in ignore, entry
    context = IGNORE.files(REPO)
    assert not [f for f in context if re.search(r"(^|/)(\.env|\.netrc|[^/]*\.(key|pem))$", f)]
    assert not [f for f in context if f.startswith(("tests/", ".git/", ".venv")) or "__pycache__" in f]
    size = sum((REPO / f).stat().st_size for f in context)
    assert size < 20 * 2**20, f"build context of {size / 2**20:.1f} MiB"


# ---------------------------------------------------------------- the build, replayed here


def _copy(words: list[str], workdir: Path) -> None:
    """A COPY (no wildcards, no --from): folders copy their context files, files land in ``dest``."""
    *sources, dest = [w for w in words if not w.startswith("--")]
    target = Path(dest) if dest.startswith("/") else workdir / dest
    for src in sources:
        src = src.rstrip("/") if src not in ("/", "./") else ""
        if (REPO / src).is_dir():
            for rel in IGNORE.files(REPO, src):
                out = target / Path(rel).relative_to(src or ".")
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, out)
        else:
            out = target / Path(src).name if dest.endswith("/") else target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / src, out)


def _env_pairs(rest: str) -> dict:
    words = shlex.split(rest)
    if "=" not in words[0]:  # the legacy form: ENV NAME value
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


@pytest.fixture(scope="module", params=list(STACKS))
def image(request, tmp_path_factory):
    """The Dockerfile of one stack replayed on this machine, in order: ENV, WORKDIR, COPY into a
    temporary image tree; ``pip install .`` into ``site`` (not this environment); each other RUN
    command with this environment's ``python`` first on PATH, in the WORKDIR. Returns the tree and
    every command's result. Only in the CPU stack with the image's megatron-core (skipped elsewhere).
    """
    stack = request.param
    if installed_megatron_core() != stack:
        pytest.skip(f"the megatron-core {stack} image is replayed in the stack that has it (make test); "
                    f"this one has {installed_megatron_core()}")
    overrides = STACKS[stack]["build_args"]
    root = tmp_path_factory.mktemp("image")
    site = root / "site-packages"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    workdir, results = root, []
    for op, rest in instructions(overrides):
        if op == "ENV":
            env.update(_env_pairs(rest))
        elif op == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            _copy(arguments(rest), workdir)
        elif op == "RUN":
            for command in [part.strip() for part in rest.split("&&")]:
                assignments, words = command_words(command)
                if words[:2] == ["pip", "install"] and "." not in words:
                    continue  # the pinned dependencies: this environment has them (checked above)
                if words[:2] == ["pip", "install"]:
                    command = shlex.join([sys.executable, "-m", "pip", "install", "--no-index", "--quiet",
                                          "--target", str(site), *words[2:]])
                results.append((command, subprocess.run(["bash", "-c", command], cwd=workdir,
                                                        env={**env, **assignments}, capture_output=True,
                                                        text=True, timeout=300)))
    cmd = next(arguments(rest) for op, rest in instructions(overrides) if op == "CMD")
    return {"root": root, "workdir": workdir, "site": site, "env": env, "results": results, "cmd": cmd}


def test_every_run_command_succeeds_on_the_copied_tree(image):
    commands = [command for command, _ in image["results"]]
    assert any("--target" in c for c in commands) and any("pretrain_llama.py --help" in c for c in commands)
    assert any("check_megatron_core" in c for c in commands) and any("helpers_cpp" in c for c in commands)
    assert any("AutoTokenizer" in c for c in commands)  # the tokenizer libraries import without their --no-deps'd needs
    for command, result in image["results"]:
        assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    # the emulation is honest only if the copy, not this checkout, is what those commands imported
    probe = subprocess.run([sys.executable, "-c", "import megatron_patch, reweighting, pretrain_llama as p; "
                            "print(megatron_patch.__file__, reweighting.__file__, p.__file__)"],
                           cwd=image["workdir"], env=image["env"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert all(Path(f).is_relative_to(image["workdir"]) for f in probe.stdout.split()), probe.stdout


def test_cmd_runs_in_the_workdir(image):
    cmd = image["cmd"]
    assert cmd[0] == "python"
    result = subprocess.run([sys.executable, *cmd[1:]], cwd=image["workdir"], env=image["env"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--reweight-strategy" in result.stdout, result.stderr[-3000:]


def _repo_modules(package: str) -> set[str]:
    """The .py files of ``package`` in the build context, relative to the repository."""
    return {f for f in IGNORE.files(REPO, package.replace(".", "/")) if f.endswith(".py")}


def test_pip_installs_every_package_module_and_data_file(image):
    kwargs, site = setup_kwargs(), image["site"]
    packages, modules = kwargs.get("packages", []), kwargs.get("py_modules", [])
    assert packages and modules
    for package in packages:
        files = {f for f in _repo_modules(package) if Path(f).parent.as_posix() == package.replace(".", "/")}
        assert f"{package.replace('.', '/')}/__init__.py" in files, package
        for rel in files:
            assert (image["workdir"] / rel).is_file(), f"{rel} is not copied into the image"
            assert (site / rel).is_file(), f"{rel} is not installed by pip install ."
    for module in modules:
        assert (image["workdir"] / f"{module}.py").is_file() and (site / f"{module}.py").is_file(), module
    for package, patterns in (kwargs.get("package_data") or {}).items():
        folder = package.replace(".", "/")
        for pattern in patterns:
            wanted = sorted((REPO / folder).glob(pattern))
            assert wanted, f"package_data {package}: {pattern} matches nothing"
            for path in wanted:
                rel = path.relative_to(REPO).as_posix()
                assert (image["workdir"] / rel).is_file() and (site / rel).is_file(), rel
    # the installed project alone runs: the console script rw-pretrain-llama, from an empty folder
    empty = image["root"] / "elsewhere"
    empty.mkdir(exist_ok=True)
    script = [s.split("=", 1)[1] for s in kwargs["entry_points"]["console_scripts"] if "llama" in s][0]
    module, func = script.split(":")
    code = (f"import sys; sys.argv = ['rw-pretrain-llama', '--help']; import {module} as m; "
            f"assert m.__file__.startswith({str(site)!r}), m.__file__; m.{func}()")
    result = subprocess.run([sys.executable, "-c", code], cwd=empty, env=dict(image["env"], PYTHONPATH=str(site)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "--reweight-strategy" in result.stdout, result.stderr[-3000:]


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """The absolute imports of a file: ``(module, None)`` for ``import module``, ``(module, name)``
    for each name of ``from module import name``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [(node.module, alias.name) for alias in node.names]
    return out


def _module_file(root: Path, dotted: str) -> Path | None:
    """The file that ``import dotted`` loads from ``root``: a module or a package's __init__.py."""
    rel = Path(*dotted.split("."))
    for candidate in (root / f"{rel}.py", root / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_copied_code_imports_only_what_is_copied(image):
    """Every import in the copied Python files of a top-level module or package of this repository
    (tests, say, which .dockerignore leaves out) resolves inside the image tree: the module, and a
    name imported from it is a submodule or a name its file defines or imports."""
    workdir = image["workdir"]
    first_party = {p.stem for p in REPO.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    checked = 0
    for path in sorted(workdir.rglob("*.py")):
        if path.relative_to(workdir).parts[0] == "build":
            continue  # pip's build folder
        for module, name in _imports(path):
            if module.split(".")[0] not in first_party:
                continue
            where = f"{path.relative_to(workdir)} imports {module}" + (f".{name}" if name else "")
            found = _module_file(workdir, module)
            assert found, f"{where}: {module} is not in the image"
            if name and name != "*" and not _module_file(workdir, f"{module}.{name}"):
                assert re.search(rf"\b{re.escape(name)}\b", found.read_text()), f"{where}: not in {found.name}"
            checked += 1
    assert checked > 20, checked
