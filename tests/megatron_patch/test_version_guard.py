import ast
import pathlib

import pytest

from megatron_patch import version_guard
from megatron_patch.version_guard import REQUIRED, MegatronVersionError, check_megatron_core

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_installed_megatron_core_passes():
    check_megatron_core()


def test_hidden_symbol_is_named_with_supported_versions(monkeypatch):
    from megatron.core import parallel_state

    monkeypatch.delattr(parallel_state, "get_data_parallel_group")
    with pytest.raises(MegatronVersionError) as err:
        check_megatron_core()
    message = str(err.value)
    assert "megatron.core.parallel_state.get_data_parallel_group" in message
    assert "Supported megatron-core versions: 0.16.1" in message
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
