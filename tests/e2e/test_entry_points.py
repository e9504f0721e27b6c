"""The entry points as users type them: ``python pretrain_llama.py ...`` from any directory, no launcher."""

import os
import subprocess
import sys

import pytest

from megatron_patch.launch import ROOT, launch_env
from megatron_patch.logging_utils import read_metrics
from tests.helpers.e2e import TINY, data_flags


def _python(script: str, args: list[str], cwd, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python /abs/path/script args`` in ``cwd``, without torchrun (no RANK/WORLD_SIZE set)."""
    env = {k: v for k, v in launch_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", ["pretrain_llama.py", "pretrain_gpt.py"])
def test_one_process_without_torchrun(script, fixture_data, tmp_path):
    metrics = tmp_path / "m.jsonl"
    flags = [*TINY, *data_flags(fixture_data), "--train-iters", "3", "--global-batch-size", "4",
             "--reweight-strategy", "linupper", "--save", str(tmp_path / "ckpt"), "--metrics-file", str(metrics)]
    out = _python(script, flags, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    train = read_metrics(str(metrics), "train")
    assert [r["iteration"] for r in train] == [1, 2, 3]
    assert train[-1]["consumed_samples"] == 12 and train[-1]["global_batch_size"] == 4
    groups = read_metrics(str(metrics), "group")
    assert len(groups[-1]["losses"]) == 2  # micro batch 2 x DP 1: the group of one process
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "3"


def test_help_and_errors_from_another_directory(tmp_path):
    out = _python("pretrain_llama.py", ["--help"], cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "--reweight-strategy" in out.stdout and "--weight-collapse-min-ess" in out.stdout
    out = _python("pretrain_llama.py", ["--model", "tiny", "--mock-data", "--vocab-size", "64", "--train-iters", "2",
                                        "--micro-batch-size", "0"], cwd=tmp_path, timeout=120)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and errors == ["error: --micro-batch-size 0: must be >= 1"]
    assert "Traceback" not in out.stderr and not out.stdout
