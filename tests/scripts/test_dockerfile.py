"""Structure of the Dockerfile (docker build cannot run on our machines): a pinned NGC PyTorch
base, the project installed with pip without touching the image's torch, a runnable entry
point, nothing secret or local in the build context."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


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


def base_image() -> str:
    ins = instructions()
    args = {}
    for op, rest in ins:
        if op == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()
        if op == "FROM":
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
    raise AssertionError("no FROM")


def test_base_is_ngc_pytorch_pinned_by_tag():
    image = base_image()
    m = re.fullmatch(r"nvcr\.io/nvidia/pytorch:(\d{2})\.(\d{2})-py3", image)
    assert m, image  # a dated NGC tag, never latest or an unpinned name
    assert sum(op == "FROM" for op, _ in instructions()) == 1


def test_project_installed_with_pip_keeping_the_image_torch():
    runs = " ".join(rest for op, rest in instructions() if op == "RUN")
    assert "megatron-core==0.16.1" in runs
    installs = re.findall(r"pip install ([^&;]*)", runs)
    assert installs and all("--no-deps" in i for i in installs), installs  # never replace NGC's torch
    assert not re.search(r"\btorch\b(?![-_.\w])", " ".join(installs).replace("megatron-core", ""))
    assert any(re.search(r"(^|\s)\.(\s|$)", i) for i in installs), "the project itself is pip-installed"
    # versions match what the CPU environment pins
    reqs = dict(
        l.split("==") for l in (REPO / "requirements-cpu.txt").read_text().splitlines() if "==" in l and not l.startswith("#")
    )
    for pkg in ("megatron-core", "sentencepiece", "psutil"):
        assert f"{pkg}=={reqs[pkg]}" in runs, pkg
    # checked at build time: compiled dataset helpers (no run-time compile) and the version guard
    assert "helpers_cpp" in runs and "check_megatron_core" in runs


def test_copies_what_the_entry_points_need():
    copied = " ".join(rest for op, rest in instructions() if op in ("COPY", "ADD"))
    for path in ("setup.py", "reweighting", "megatron_patch", "pretrain_llama.py", "pretrain_gpt.py", "scripts"):
        assert path in copied, path
        assert (REPO / path).exists() or path.startswith("pretrain_"), path
    assert not any(op == "ADD" and "http" in rest for op, rest in instructions())  # no downloads by ADD
    ops = [op for op, _ in instructions()]
    assert "WORKDIR" in ops and ("CMD" in ops or "ENTRYPOINT" in ops)


def test_no_secrets_and_a_small_context():
    text = DOCKERFILE.read_text()
    assert not re.search(r"(?i)(api[_-]?key|token|password|secret|NGC_API|WANDB_API)\s*[=:]", text)
    assert not re.search(r"(?i)--build-arg|ARG\s+\w*(TOKEN|KEY|PASS)", text)
    ignore = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "data", "runs", "**/*.key", "**/.netrc"):
        assert entry in ignore, entry
