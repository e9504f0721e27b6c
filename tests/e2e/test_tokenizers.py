"""Every --tokenizer-type end to end: tools/preprocess_data.py writes the data, pretrain_gpt.py trains a few
iterations on it with the same tokenizer flags (one process each, two at a time)."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from megatron_patch.launch import ROOT, launch_env
from megatron_patch.logging_utils import read_metrics
from megatron_patch.tokenizer import TOKENIZER_TYPES, tokenizer_flags
from tests.helpers.e2e import TINY
from tests.helpers.tokenizer_files import fixture_texts, null_texts
from tests.tools.helpers import write_jsonl


def _python(args, cwd):
    env = {k: v for k, v in launch_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _preprocess_and_train(kind, settings, out):
    os.makedirs(out)
    texts = fixture_texts()
    path = write_jsonl(os.path.join(out, "docs.jsonl"),
                       [{"text": t} for t in (null_texts(texts) if kind == "NullTokenizer" else texts)])
    prefix = os.path.join(out, "data")
    prep = _python([os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", path, "--output-prefix", prefix,
                    *tokenizer_flags(settings), "--append-eod"], out)
    if prep.returncode:
        return prep, None
    metrics = os.path.join(out, "m.jsonl")
    train = _python([os.path.join(ROOT, "pretrain_gpt.py"), *TINY, "--train-iters", "2", "--global-batch-size", "2",
                     "--data-path", prefix + "_text_document", "--split", "90,10,0", *tokenizer_flags(settings),
                     "--metrics-file", metrics], out)
    return train, metrics


@pytest.fixture(scope="module")
def runs(tokenizer_stand_ins, tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer_runs")
    with ThreadPoolExecutor(2) as pool:
        futures = {kind: pool.submit(_preprocess_and_train, kind, tokenizer_stand_ins[kind], str(root / kind))
                   for kind in TOKENIZER_TYPES}
        return {kind: future.result() for kind, future in futures.items()}


@pytest.mark.parametrize("kind", TOKENIZER_TYPES)
def test_preprocess_then_train(runs, kind):
    proc, metrics = runs[kind]
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = read_metrics(metrics, "train")
    assert [r["iteration"] for r in train] == [1, 2] and all(r["lm loss"] > 0 for r in train)
