"""setup.py installs every tools module and the data files the tools read at run time (no build: the
``setup()`` call is captured)."""

import fnmatch
import os
import runpy

import pytest
import setuptools

from megatron_patch.launch import ROOT
from tests.tools.helpers import TOOLS

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


@pytest.fixture(scope="module")
def setup_kwargs():
    captured = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
        mp.chdir(ROOT)
        runpy.run_path(os.path.join(ROOT, "setup.py"))
    return captured


def _tools_files():
    for directory, folders, files in os.walk(TOOLS):
        folders[:] = [f for f in folders if f != "__pycache__"]
        package = os.path.relpath(directory, ROOT).replace(os.sep, ".")
        yield from ((package, name) for name in files if not name.endswith(".pyc"))


def test_every_tools_module_is_in_an_installed_package(setup_kwargs):
    packages = set(setup_kwargs["packages"])
    for package, name in _tools_files():
        if name.endswith(".py"):
            assert package in packages, f"{package}/{name}: its folder needs an __init__.py"


def test_every_data_file_under_tools_is_package_data(setup_kwargs):
    data = setup_kwargs["package_data"]
    others = [(p, n) for p, n in _tools_files() if not n.endswith(".py")]
    assert ("tools.data.fixtures", "NOTICE") in others and len(others) >= 6
    for package, name in others:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in data.get(package, ())), f"{package}/{name}"


def test_console_scripts_name_the_data_tools(setup_kwargs):
    scripts = dict(line.split("=") for line in setup_kwargs["entry_points"]["console_scripts"])
    assert {k: v for k, v in scripts.items() if v.startswith("tools.")} == {
        "rw-preprocess-data": "tools.preprocess_data:main", "rw-train-tokenizer": "tools.train_tokenizer:main",
        "rw-build-corpus": "tools.build_corpus:main", "rw-prepare-data": "tools.prepare_data:main",
        "rw-prepare-slimpajama": "tools.prepare_slimpajama:main"}
