"""tools/evaluate.py, offline: a tiny checkpoint of ours on the shipped tiny task (tests/tools/fixtures/lm_eval),
its accuracy recomputed here from the exported model's log-likelihoods; a task whose dataset is not cached
is one error line."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatron_patch.launch import ROOT
from tests.helpers.distributed import run_distributed
from tests.helpers.hf import LLAMA_FLAGS, save_and_predict, tokens
from tests.tools.helpers import TOOLS, run_python
from tools import evaluate

TASKS = os.path.join(ROOT, "tests", "tools", "fixtures", "lm_eval")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_model):
    """A tiny Llama of ours (TP 1), with 128 positions and the 512-piece tokenizer, saved by the training code."""
    root = tmp_path_factory.mktemp("eval") / "ckpt"
    flags = [*LLAMA_FLAGS, "--tokenizer-model", tokenizer_model, "--seq-length", "64",
             "--max-position-embeddings", "128"]
    run_distributed(save_and_predict, world_size=1, flags=flags, family="llama", root=root, ids=tokens(520),
                    prompt=torch.tensor([[1, 2]]), new_tokens=1)
    return root


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own (for the tools it starts)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path / "hf_home"


def _expected_accuracy(hf_dir, docs):
    """acc and acc_norm of 0-shot multiple choice, computed with transformers alone: the argmax over choices of
    the summed log-probability of " " + choice after "Question: ...\\nAnswer:" (acc_norm: divided by its length)."""
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    hits = {"acc": 0, "acc_norm": 0}
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = []
        for choice in doc["choices"]:
            context_ids = tokenizer(context)["input_ids"]
            whole = tokenizer(context + " " + choice)["input_ids"]
            ids = torch.tensor([whole])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids[:, :-1]).logits[0], dim=-1)
            scores.append(sum(logprobs[i - 1, whole[i]].item() for i in range(len(context_ids), len(whole))))
        hits["acc"] += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
        norm = [s / len(c) for s, c in zip(scores, doc["choices"])]
        hits["acc_norm"] += max(range(len(norm)), key=norm.__getitem__) == doc["answer"]
    return {k: v / len(docs) for k, v in hits.items()}


def test_a_checkpoint_on_the_tiny_task(checkpoint, tmp_path, empty_hf_cache):
    out = tmp_path / "out"
    proc = run_python([os.path.join(TOOLS, "evaluate.py"), "--model", str(checkpoint), "--tasks", "tiny_mc",
                       "--include-path", TASKS, "--num-fewshot", "0", "--out", str(out)], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "downstream.json").read_text())
    docs = [json.loads(line) for line in open(os.path.join(TASKS, "tiny_mc.jsonl"))]
    test_docs = [d for d in docs if d["split"] == "test"]
    assert record["samples"] == {"tiny_mc": len(test_docs)} and record["checkpoint_iteration"] == 3
    hf_dir = tmp_path / "hf"
    assert run_python([os.path.join(TOOLS, "convert_checkpoint.py"), "--load", str(checkpoint), "--to-hf", str(hf_dir)],
                      cwd=tmp_path).returncode == 0
    expected = _expected_accuracy(hf_dir, test_docs)
    assert record["scores"]["tiny_mc"]["acc"] == pytest.approx(expected["acc"])
    assert record["scores"]["tiny_mc"]["acc_norm"] == pytest.approx(expected["acc_norm"])
    table = (out / "downstream.md").read_text()
    assert f"| tiny_mc | {len(test_docs)} | acc | {expected['acc']:.4f} |" in table


def test_a_dataset_that_is_not_cached_is_one_error_line(checkpoint, tmp_path, empty_hf_cache):
    proc = run_python([os.path.join(TOOLS, "evaluate.py"), "--model", str(checkpoint), "--tasks", "sciq"], cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: --tasks sciq: dataset allenai/sciq is not in the Hugging Face datasets cache")
    assert "--fetch-datasets --tasks sciq" in lines[0] and str(empty_hf_cache) in lines[0]


def test_defaults_are_the_papers_tasks_five_shot(monkeypatch):
    seen = {}
    monkeypatch.setattr(evaluate, "evaluate", lambda model, **kwargs: seen.update(kwargs, model=model))
    evaluate.main(["--model", "runs/x"])
    assert seen["tasks"] == ["logiqa", "logiqa2", "sciq", "piqa"] and seen["num_fewshot"] == 5


def test_an_hf_directory_needs_out_and_a_model_must_be_one(tmp_path, capsys):
    from tests.helpers.cli import one_error_line

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert "needs --out DIR" in one_error_line(evaluate.main, ["--model", str(tmp_path / "hf")], capsys)
    assert "neither a checkpoint of ours" in one_error_line(evaluate.main, ["--model", str(tmp_path)], capsys)
