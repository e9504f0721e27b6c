"""A Hugging Face model trained on with reweighting: tools/convert_checkpoint.py --from-hf, then a 2-process
``pretrain_llama.py --load`` of the result with the flags the tool printed, then the trained checkpoint back to HF."""

import json
import os

import sentencepiece
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from megatron_patch.launch import ROOT
from tests.helpers.e2e import data_flags, torchrun
from tests.tools.helpers import run_python

CONVERT = os.path.join(ROOT, "tools", "convert_checkpoint.py")


def test_train_from_an_imported_llama_and_export_it(fixture_data, tmp_path):
    vocab = sentencepiece.SentencePieceProcessor(model_file=fixture_data["tokenizer_model"]).vocab_size()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "released")
    proc = run_python([CONVERT, "--from-hf", str(tmp_path / "released"), "--save", str(tmp_path / "imported")],
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train on it with:\n  python pretrain_llama.py --num-layers 2 --hidden-size 64" in proc.stderr
    flags = json.loads((tmp_path / "imported" / "run.json").read_text())["model_flags"]

    out = torchrun("pretrain_llama.py", [*flags, *data_flags(fixture_data), "--load", str(tmp_path / "imported"),
                                         "--save", str(tmp_path / "trained"), "--micro-batch-size", "2",
                                         "--train-iters", "3", "--log-interval", "1", "--eval-iters", "1",
                                         "--reweight-strategy", "linupper", "--reweight-warmup-iters", "1"])
    assert "weights only (an imported model), starting from them at iteration 0" in out.stdout
    assert "iteration        1/       3" in out.stdout and "iteration        3/       3" in out.stdout
    assert (tmp_path / "trained" / "latest_checkpointed_iteration.txt").read_text() == "3"

    proc = run_python([CONVERT, "--load", str(tmp_path / "trained"), "--to-hf", str(tmp_path / "exported")],
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    released = AutoModelForCausalLM.from_pretrained(tmp_path / "released", dtype=torch.float32).state_dict()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported", dtype=torch.float32).state_dict()
    assert released.keys() == exported.keys()
    assert not torch.equal(released["lm_head.weight"], exported["lm_head.weight"])  # three steps trained it
