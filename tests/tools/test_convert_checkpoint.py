"""tools/convert_checkpoint.py: our checkpoints as Hugging Face models and back, checked under transformers.

Checkpoints are saved by the training code in real ranks (a Llama with GQA at TP=2, a GPT-2
layout at PP=2; tests/helpers/hf.py), whose own logits and greedy tokens are the reference for
transformers' (fp32, CPU). HF models built here at random go through ours and back unchanged.
"""

import json
import shutil

import pytest
import sentencepiece
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig

from megatron_patch.errors import ArgumentError
from megatron_patch.hf_mapping import merge_qkv, shape_of_config, split_qkv
from tests.helpers.cli import one_error_line
from tests.helpers.distributed import run_distributed
from tests.helpers.hf import GPT_FLAGS, LLAMA_FLAGS, load_and_predict, save_and_predict, tokens
from tests.tools.helpers import fixture_texts
from tools.convert_checkpoint import export, import_hf, main

PROMPT = torch.tensor([[5, 17, 42, 7]])
NEW_TOKENS = 6


def _saved(root, flags, family, vocab, **layout):
    ids = tokens(vocab)
    results = run_distributed(save_and_predict, world_size=2, **layout, flags=flags, family=family, root=root / "ckpt",
                              ids=ids, prompt=PROMPT, new_tokens=NEW_TOKENS)
    ours = next(r for r in results if r["logits"] is not None)  # the last pipeline stage's
    summary = export(str(root / "ckpt"), str(root / "hf"))
    return {"ckpt": root / "ckpt", "hf": root / "hf", "ids": ids, "ours": ours, "summary": summary, "vocab": vocab}


@pytest.fixture(scope="module")
def llama_tp2(tmp_path_factory, tokenizer_model):
    flags = [*LLAMA_FLAGS, "--tokenizer-model", tokenizer_model, "--tensor-model-parallel-size", "2"]
    return _saved(tmp_path_factory.mktemp("llama"), flags, "llama", 520, tp=2)


@pytest.fixture(scope="module")
def gpt_pp2(tmp_path_factory):
    return _saved(tmp_path_factory.mktemp("gpt"), [*GPT_FLAGS, "--pipeline-model-parallel-size", "2"], "gpt", 300, pp=2)


def _hf_model(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


@pytest.mark.parametrize("case, cls", [("llama_tp2", "LlamaForCausalLM"), ("gpt_pp2", "GPT2LMHeadModel")])
def test_transformers_gives_our_logits_and_greedy_tokens(request, case, cls):
    saved = request.getfixturevalue(case)
    model = _hf_model(saved["hf"])
    assert type(model).__name__ == cls == saved["summary"]["class"]
    assert model.config.vocab_size == saved["vocab"]  # TP padding rows dropped (768 rows at TP 2 for 520 words)
    with torch.no_grad():
        theirs = model(saved["ids"]).logits
    ours = saved["ours"]["logits"][..., :saved["vocab"]]
    assert ours.std() > 0.1  # logits that differ by token and position: the comparison means something
    assert (theirs - ours).abs().max().item() <= 1e-4
    model.generation_config.eos_token_id = None  # ours does not stop at EOS either: NEW_TOKENS tokens each
    generated = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    assert torch.equal(generated, saved["ours"]["generated"])


def test_layouts_as_saved(llama_tp2, gpt_pp2):
    llama = json.loads((llama_tp2["hf"] / "config.json").read_text())
    assert (llama["num_attention_heads"], llama["num_key_value_heads"], llama["tie_word_embeddings"]) == (4, 2, False)
    assert llama["rope_parameters"]["rope_theta"] == 10000 and llama["intermediate_size"] == 96
    gpt = json.loads((gpt_pp2["hf"] / "config.json").read_text())
    assert (gpt["tie_word_embeddings"], gpt["n_positions"], gpt["activation_function"]) == (True, 48, "gelu")
    model = _hf_model(gpt_pp2["hf"])
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert llama_tp2["summary"]["iteration"] == gpt_pp2["summary"]["iteration"] == 3
    assert gpt_pp2["summary"]["tokenizer"] is None  # NullTokenizer: nothing to write


def test_sentencepiece_tokenizer_gives_the_training_ids(llama_tp2, tokenizer_model):
    ours = sentencepiece.SentencePieceProcessor(model_file=tokenizer_model)
    theirs = AutoTokenizer.from_pretrained(llama_tp2["hf"])
    texts = [t[:20000] for t in fixture_texts()] + ["  two leading spaces", "digits 1234567 and 3.14", "tab\tand\n\nnewlines",
                                                    "unicode: ü ß ∑ 🙂 and a rare 龘", ""]
    for text in texts:
        assert theirs(text)["input_ids"] == ours.encode(text), text[:60]
        assert theirs.decode(ours.encode(text)) == ours.decode(ours.encode(text))
    assert theirs.eos_token_id == ours.eos_id() == json.loads((llama_tp2["hf"] / "config.json").read_text())["eos_token_id"]


def _random_hf(kind, path):
    """A random HF model saved to ``path`` (norms and biases perturbed too); returns it."""
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=300, n_positions=48, n_embd=64, n_layer=2, n_head=4, n_inner=128,
                            activation_function="gelu")
    else:
        config = LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5,
                             tie_word_embeddings=kind == "llama-tied-bias", attention_bias=kind == "llama-tied-bias",
                             mlp_bias=kind == "llama-tied-bias")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.3 * torch.randn(param.shape))
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def imported_llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    model = _random_hf("llama", root / "hf")
    return {"model": model, "record": import_hf(str(root / "hf"), str(root / "ckpt")), "ckpt": root / "ckpt",
            "root": root}


@pytest.mark.parametrize("kind, family", [("llama", "llama"), ("llama-tied-bias", "gpt"), ("gpt2", "gpt")])
def test_hf_to_ours_to_hf_gives_identical_tensors(tmp_path, kind, family):
    source = _random_hf(kind, tmp_path / "src")
    record = import_hf(str(tmp_path / "src"), str(tmp_path / "ours"))
    assert record["family"] == family and (tmp_path / "ours" / "latest_checkpointed_iteration.txt").read_text() == "0"
    export(str(tmp_path / "ours"), str(tmp_path / "back"))
    back = _hf_model(tmp_path / "back")
    theirs, again = source.state_dict(), back.state_dict()
    assert theirs.keys() == again.keys()
    assert all(torch.equal(theirs[k], again[k]) for k in theirs)
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "tie_word_embeddings"):
        assert getattr(source.config, field) == getattr(back.config, field)


def test_our_loader_takes_an_import_at_iteration_zero_with_fresh_optimizer(imported_llama):
    record = imported_llama["record"]
    ids = tokens(500)
    flags = [*record["model_flags"], "--mock-data", "--train-iters", "1", "--tensor-model-parallel-size", "2"]
    results = run_distributed(load_and_predict, world_size=2, tp=2, flags=flags, family=record["family"],
                              load=imported_llama["ckpt"], ids=ids)
    with torch.no_grad():
        theirs = imported_llama["model"](ids).logits
    for result in results:  # 500 words in 512 rows at TP 2: the padding rows load as zeros
        assert result["iteration"] == 0 and result["optimizer_state"] == 0 and result["lr_unchanged"]
        assert (result["logits"][..., :500] - theirs).abs().max().item() <= 1e-4


def test_refusals_are_one_line(imported_llama, tmp_path, capsys):
    model = json.loads((imported_llama["ckpt"] / "run.json").read_text())["config"]["model"]
    with pytest.raises(ArgumentError, match="RMSNorm \\+ GELU \\+ rope positions has no Hugging Face counterpart"):
        shape_of_config(dict(model, swiglu=False), "--load X")
    with pytest.raises(ArgumentError, match="partial RoPE"):
        shape_of_config(dict(model, rotary_percent=0.5), "--load X")
    odd = tmp_path / "odd"
    shutil.copytree(imported_llama["ckpt"], odd)
    record = json.loads((odd / "run.json").read_text())
    record["config"]["model"]["normalization"] = "LayerNorm"
    (odd / "run.json").write_text(json.dumps(record))
    gelu_new = tmp_path / "gelu_new"
    _random_hf("gpt2", gelu_new)
    config = json.loads((gelu_new / "config.json").read_text())
    (gelu_new / "config.json").write_text(json.dumps(dict(config, activation_function="gelu_new")))
    cases = [(["--load", str(odd), "--to-hf", str(tmp_path / "x")], "LayerNorm + SwiGLU + rope positions"),
             (["--from-hf", str(gelu_new), "--save", str(tmp_path / "y")], "activation_function 'gelu_new'"),
             (["--from-hf", str(imported_llama["root"] / "hf"), "--save", str(imported_llama["ckpt"])],
              "holds checkpoints already"),
             (["--load", str(odd)], "pass --load CKPT_DIR --to-hf OUT_DIR")]
    capsys.readouterr()  # transformers' progress bars of the saves above
    for argv, text in cases:
        assert text in one_error_line(main, argv, capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_qkv_split_inverts_merge_and_keeps_groups_together():
    shape = shape_of_config({"normalization": "RMSNorm", "swiglu": True, "position_embedding_type": "rope",
                             "num_attention_heads": 6, "num_query_groups": 2, "kv_channels": 3, "hidden_size": 12,
                             "num_layers": 1, "ffn_hidden_size": 8, "vocab_size": 10, "max_position_embeddings": 8,
                             "norm_epsilon": 1e-5, "untie_embeddings_and_output_weights": True,
                             "disable_bias_linear": True}, "test")
    # rows named by (group, slot): slots 0-2 the group's 3 query heads, 3 its key head, 4 its value head
    qkv = torch.tensor([[10 * g + slot] for g in range(2) for slot in range(5) for _ in range(3)], dtype=torch.float)
    q, k, v = split_qkv(qkv, shape)
    assert q[::3, 0].tolist() == [0, 1, 2, 10, 11, 12]  # query head h belongs to group h // 3
    assert k[::3, 0].tolist() == [3, 13] and v[::3, 0].tolist() == [4, 14]
    assert torch.equal(merge_qkv(q, k, v, shape), qkv)


def test_an_export_imports_back_with_its_tokenizer(llama_tp2, tmp_path):
    from safetensors.torch import load_file

    record = import_hf(str(llama_tp2["hf"]), str(tmp_path / "ours"))
    flags = record["model_flags"]
    assert flags[flags.index("--tokenizer-model") + 1] == str(llama_tp2["hf"] / "tokenizer.model")
    assert record["config"]["data"]["tokenizer_type"] == "SentencePieceTokenizer"
    export(str(tmp_path / "ours"), str(tmp_path / "again"))
    first, again = (load_file(str(d / "model.safetensors")) for d in (llama_tp2["hf"], tmp_path / "again"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (llama_tp2["hf"] / "tokenizer.json").read_text()
