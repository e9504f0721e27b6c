import ast
import pathlib

import pytest
from packaging.requirements import Requirement

from megatron_patch import version_guard
from megatron_patch.version_guard import (REQUIRED, MegatronVersionError, check_megatron_core, install_requirement,
                                          installed_version, is_supported, require_megatron_core)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_installed_megatron_core_passes():
    check_megatron_core()
    version = installed_version()
    assert is_supported(version) and "+" not in version  # 0.19 appends the git commit of site-packages' repository


@pytest.mark.parametrize("version, supported", [
    ("0.16.1", True), ("0.19.0", True), ("0.19.2", True), ("0.19.10", True),
    ("0.16.0", False), ("0.17.0", False), ("0.18.3", False), ("0.20.0", False), ("0.190.1", False), ("1.19.2", False),
])
def test_supported_range(version, supported):
    assert is_supported(version) is supported


def test_untested_release_is_refused_in_one_line(monkeypatch, capsys):
    from megatron.core import package_info

    monkeypatch.setattr(package_info, "__version__", "0.18.0+abc1234")
    with pytest.raises(SystemExit) as exit_info:
        require_megatron_core()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: megatron-core 0.18.0 is not a tested release. ")
    assert "Supported megatron-core versions: 0.16.1 (Python 3.10-3.11), 0.19.x (Python >= 3.12)" in err
    assert "pip install 'megatron-core" in err


def _megatron_core_requirements(lines) -> list[Requirement]:
    return [r for r in map(Requirement, lines) if r.name == "megatron-core"]


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13"])
def test_pins_setup_py_and_the_guard_agree(python):
    # setup.py's requirement for this Python, the exact pin requirements-cpu.txt installs, and the
    # guard's supported range and install hint must name the same release.
    env = {"python_version": python, "python_full_version": f"{python}.0"}
    setup = ast.parse((ROOT / "setup.py").read_text())
    [install_requires] = [kw.value for node in ast.walk(setup) if isinstance(node, ast.Call)
                          for kw in node.keywords if kw.arg == "install_requires"]
    [wanted] = [r for r in _megatron_core_requirements(ast.literal_eval(install_requires))
                if r.marker is None or r.marker.evaluate(env)]
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements-cpu.txt").read_text().splitlines()]
    [pinned] = [r for r in _megatron_core_requirements(filter(None, lines))
                if r.marker is None or r.marker.evaluate(env)]
    [version] = [spec.version for spec in pinned.specifier if spec.operator == "=="]
    assert is_supported(version) and wanted.specifier.contains(version)
    hint = install_requirement(tuple(map(int, python.split("."))))
    assert Requirement(hint).specifier == wanted.specifier


def test_hidden_symbol_is_named_with_supported_versions(monkeypatch):
    from megatron.core import parallel_state

    monkeypatch.delattr(parallel_state, "get_data_parallel_group")
    with pytest.raises(MegatronVersionError) as err:
        check_megatron_core()
    message = str(err.value)
    assert "megatron.core.parallel_state.get_data_parallel_group" in message
    assert "Supported megatron-core versions: 0.16.1 (Python 3.10-3.11), 0.19.x (Python >= 3.12)" in message
    assert "\n" not in message


def test_changed_signature_is_named(monkeypatch):
    from megatron.core.pipeline_parallel import schedules

    def forward_backward_no_pipelining(forward_step_func, data_iterator, model):
        pass

    monkeypatch.setattr(schedules, "forward_backward_no_pipelining", forward_backward_no_pipelining)
    with pytest.raises(MegatronVersionError, match=r"forward_backward_no_pipelining\(\) parameter\(s\) num_microbatches"):
        check_megatron_core()


def test_missing_module_is_named():
    with pytest.raises(MegatronVersionError, match="module megatron.core.no_such_module"):
        check_megatron_core({"megatron.core.no_such_module": {"x": ()}})


def _megatron_imports():
    """(module, name) for every ``from megatron.core... import name`` in the project's code."""
    files = [*ROOT.glob("megatron_patch/*.py"), *ROOT.glob("pretrain_*.py"), *ROOT.glob("tools/**/*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("megatron.core"):
                for alias in node.names:
                    yield path.name, node.module, alias.name


def test_every_megatron_symbol_the_project_imports_is_guarded():
    unguarded = [
        f"{file}: from {module} import {name}"
        for file, module, name in _megatron_imports()
        if name not in REQUIRED.get(module, {})
    ]
    assert not unguarded, "add these to megatron_patch/version_guard.py REQUIRED:\n" + "\n".join(unguarded)


def test_guard_module_imports_no_megatron_at_import_time():
    # The guard must be importable (and give its message) even when megatron-core is broken.
    source = pathlib.Path(version_guard.__file__).read_text()
    top_level = [n for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all("megatron" not in ast.unparse(n) for n in top_level)
