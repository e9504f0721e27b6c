"""Every script in tools/ starts as users type it: ``python /abs/path/tools/x.py`` from any directory,
and ``python -m tools.x`` from the repository root (``--help``; the real runs are in the tools' tests)."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from megatron_patch.launch import ROOT
from tests.tools.helpers import TOOLS, run_python

pytestmark = pytest.mark.one_stack  # paths and --help from another directory, not megatron-core: the second stack skips it (pytest.ini)

SCRIPTS = ["preprocess_data", "train_tokenizer", "build_corpus", "prepare_data", "prepare_slimpajama",
           "data/make_fixtures", "bench/overhead", "bench/loop", "bench/preprocess", "bench/preprocess_memory",
           "bench/throughput", "bench/group", "bench/trainers", "demo/run", "experiments/toy_regression",
           "experiments/redundancy",
           "convert_checkpoint", "evaluate", "compare_runs"]


def test_the_scripts_are_all_listed():
    found = {os.path.relpath(os.path.join(d, f), TOOLS)[:-3] for d, _, files in os.walk(TOOLS) for f in files
             if f.endswith(".py") and "__main__" in open(os.path.join(d, f)).read()}
    assert found == set(SCRIPTS)


@pytest.fixture(scope="module")
def help_runs(tmp_path_factory):
    """``--help`` of every script both ways (4 at a time): ``{(script, how): CompletedProcess}``."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    calls = {(s, "file"): ([os.path.join(TOOLS, s + ".py"), "--help"], elsewhere) for s in SCRIPTS}
    calls.update({(s, "-m"): (["-m", "tools." + s.replace("/", "."), "--help"], ROOT) for s in SCRIPTS})
    with ThreadPoolExecutor(4) as pool:
        done = {key: pool.submit(run_python, args, cwd, 300) for key, (args, cwd) in calls.items()}
        return {key: future.result() for key, future in done.items()}


@pytest.mark.parametrize("how", ["file", "-m"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_help(help_runs, script, how):
    proc = help_runs[script, how]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"usage: {os.path.basename(script)}.py ")
