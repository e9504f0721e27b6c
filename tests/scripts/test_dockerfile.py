"""The Dockerfile, checked without Docker.

There is no Docker daemon on our machines or in CI, so the image is never built here: nothing
below proves that ``docker build`` succeeds, that the NGC base tag still exists, or that the base
image ships what the Dockerfile expects of it (torch, numpy, packaging: ``BASE_IMAGE_PROVIDES``,
because every ``pip install`` runs with ``--no-deps``). What is checked is everything that does not
need the base image:

- the base is an NGC PyTorch image pinned by a dated tag, given as ``ARG BASE_IMAGE``;
- every ``pip install`` pin equals requirements-cpu.txt's (and setup.py's megatron-core pin), and
  every requirement of setup.py and of the pinned packages is installed or comes with the base;
- every ``COPY`` source exists and is not excluded by .dockerignore;
- the build is replayed on this machine: the ``COPY`` lines copy the build context (the working
  tree minus .dockerignore, with Docker's pattern rules) into a temporary image tree, ``pip
  install .`` runs there (into a target folder, not this environment), and the ``python`` checks
  of the ``RUN`` lines and the ``CMD`` run in the copied ``WORKDIR`` with this environment's
  Python (its pinned packages are the image's versions: checked first). So the copy holds every
  package, module and data file setup.py installs and every first-party module they import;
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

from tests.helpers.dockerfile import (  # noqa: F401 - the Dockerfile's readers
    BASE_IMAGE_PROVIDES, DOCKERFILE, REPO, DockerIgnore, arguments, instructions, pinned_by_pip, pip_installs,
    requirement_pins, setup_kwargs,
)

IGNORE = DockerIgnore((REPO / ".dockerignore").read_text())


def test_dockerignore_follows_dockers_rules():
    rules = DockerIgnore("data\n**/__pycache__\n*.egg-info\n**/*.key\nlogs/*\n!logs/keep.txt\n")
    assert rules.excluded("data") and rules.excluded("data/x/y.bin") and not rules.excluded("tools/data/a.py")
    assert rules.excluded("__pycache__/a.pyc") and rules.excluded("megatron_patch/__pycache__/a.pyc")
    assert rules.excluded("x.egg-info/PKG-INFO") and not rules.excluded("sub/x.egg-info")  # * stays in a segment
    assert rules.excluded("id.key") and rules.excluded("a/b/id.key") and not rules.excluded("a/b/id.keys")
    assert rules.excluded("logs/run.txt") and not rules.excluded("logs/keep.txt")


# ---------------------------------------------------------------- the Dockerfile's text


def base_image() -> str:
    args = {}
    for op, rest in instructions():
        if op == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()
        if op == "FROM":
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
    raise AssertionError("no FROM")


def test_base_is_ngc_pytorch_pinned_by_tag():
    ops = instructions()
    assert ops[0][0] == "ARG" and ops[0][1].startswith("BASE_IMAGE=") and ops[1] == ("FROM", "${BASE_IMAGE}")
    image = base_image()
    m = re.fullmatch(r"nvcr\.io/nvidia/pytorch:(\d{2})\.(\d{2})-py3", image)
    assert m, image  # a dated NGC tag, never latest or an unpinned name
    assert 1 <= int(m.group(2)) <= 12
    assert sum(op == "FROM" for op, _ in ops) == 1


def test_pins_match_requirements_and_setup():
    pins = pinned_by_pip()
    cpu = requirement_pins((REPO / "requirements-cpu.txt").read_text())
    assert pins and all(cpu.get(name) == version for name, version in pins.items()), (pins, cpu)
    setup = setup_kwargs()
    for line in setup["install_requires"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        # --no-deps: whatever the package needs is pip-installed here, pinned, or comes with the base
        assert name in pins or name in BASE_IMAGE_PROVIDES, f"setup.py needs {line}, the image never installs it"
        if name in pins:
            assert req.specifier.contains(pins[name]), (line, pins[name])
            exact = [s.version for s in req.specifier if s.operator == "=="]
            assert exact in ([], [pins[name]]), (line, pins[name])
    assert "megatron-core==" + pins["megatron-core"] in setup["install_requires"]
    # every --no-deps install: the image's torch must stay as NGC built it
    installs = pip_installs()
    assert installs and all("--no-deps" in words for words in installs), installs
    assert not BASE_IMAGE_PROVIDES & set(pins), pins
    assert sum("." in words for words in installs) == 1, "the project itself is pip-installed once"


def test_requirements_of_the_pinned_packages_are_in_the_image():
    """--no-deps skips each pinned package's own requirements (read from this environment, which has
    the same versions): each must be pinned here too or come with the base."""
    pins = pinned_by_pip()
    for name, version in pins.items():
        assert metadata.version(name) == version, f"this environment has {name} {metadata.version(name)}"
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                needed = canonicalize_name(req.name)
                assert needed in pins or needed in BASE_IMAGE_PROVIDES, f"{name} needs {line}"


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
    assert not re.search(r"(?i)(api[_-]?key|token|password|secret|NGC_API|WANDB_API)\s*[=:]", text)
    assert not re.search(r"(?i)--build-arg|ARG\s+\w*(TOKEN|KEY|PASS)", text)
    ignore = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "data", "runs", "tests", "**/*.key", "**/.netrc", "**/.env"):
        assert entry in ignore, entry
    context = IGNORE.files(REPO)
    assert not [f for f in context if re.search(r"(^|/)(\.env|\.netrc|[^/]*\.(key|pem))$", f)]
    assert not [f for f in context if f.startswith(("tests/", ".git/", ".venv/")) or "__pycache__" in f]
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


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The Dockerfile replayed on this machine, in order: ENV, WORKDIR, COPY into a temporary image
    tree; ``pip install .`` into ``site`` (not this environment); each other RUN command with this
    environment's ``python`` first on PATH, in the WORKDIR. Returns the tree and every command's result.
    """
    root = tmp_path_factory.mktemp("image")
    site = root / "site-packages"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    workdir, results = root, []
    for op, rest in instructions():
        if op == "ENV":
            env.update(_env_pairs(rest))
        elif op == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            _copy(arguments(rest), workdir)
        elif op == "RUN":
            for command in [part.strip() for part in rest.split("&&")]:
                words = shlex.split(command)
                if words[:2] == ["pip", "install"] and "." not in words:
                    continue  # the pinned dependencies: this environment has them (checked above)
                if words[:2] == ["pip", "install"]:
                    command = shlex.join([sys.executable, "-m", "pip", "install", "--no-index", "--quiet",
                                          "--target", str(site), *words[2:]])
                results.append((command, subprocess.run(["bash", "-c", command], cwd=workdir, env=env,
                                                        capture_output=True, text=True, timeout=300)))
    cmd = next(arguments(rest) for op, rest in instructions() if op == "CMD")
    return {"root": root, "workdir": workdir, "site": site, "env": env, "results": results, "cmd": cmd}


def test_every_run_command_succeeds_on_the_copied_tree(image):
    commands = [command for command, _ in image["results"]]
    assert any("--target" in c for c in commands) and any("pretrain_llama.py --help" in c for c in commands)
    assert any("check_megatron_core" in c for c in commands) and any("helpers_cpp" in c for c in commands)
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
