"""Our GPTModel's tensors <-> Hugging Face ``LlamaForCausalLM`` / ``GPT2LMHeadModel`` (pure torch).

Our side is the whole model (TP shards and PP stages merged) under megatron-core's names, one
entry per layer (:mod:`megatron_patch.hf_checkpoint` reads and writes it from ``torch_dist``)::

    embedding.word_embeddings.weight                    [V, h]  (vocabulary rows without TP padding)
    embedding.position_embeddings.weight                [P, h]  (learned positions only)
    decoder.layers.{i}.input_layernorm.{weight,bias}    [h]     (bias: LayerNorm only)
    decoder.layers.{i}.self_attention.linear_qkv.*      [ng * (np/ng + 2) * hn, h]: for each query
                                                        group its np/ng query heads, its key head,
                                                        its value head ("q1 q2 k1 v1 | q3 q4 k2 v2")
    decoder.layers.{i}.self_attention.linear_proj.*     [h, np * hn]
    decoder.layers.{i}.pre_mlp_layernorm.{weight,bias}  [h]
    decoder.layers.{i}.mlp.linear_fc1.*                 [f, h], SwiGLU [2f, h] = [gate; up]
    decoder.layers.{i}.mlp.linear_fc2.*                 [h, f]
    decoder.final_layernorm.{weight,bias}               [h]
    output_layer.weight                                 [V, h]  (untied only)

Facts the mapping rests on (megatron-core 0.16.1, transformers 5.23; the logits tests check them):
megatron-core's RoPE (``rotary_interleaved`` off) rotates halves, ``cat(-x2, x1)``, with
``inv_freq = base^(-2i/d)``, as HF Llama's ``rotate_half`` does, so q and k need no permutation;
GPT-2's ``Conv1D`` stores ``[in, out]`` (ours ``[out, in]``) and its ``c_attn`` is ``[q | k | v]``;
megatron-core's GELU is the exact one (HF ``gelu``, not GPT-2's ``gelu_new``); zero-centred norm
weights (``--apply-layernorm-1p``) are ``gamma - 1``.
"""

import dataclasses

import torch

from .errors import ArgumentError

LAYER = "decoder.layers.{}."


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the mapping needs of a model, read from our config or from an HF ``config.json``."""

    arch: str  # "llama" (LlamaForCausalLM) or "gpt2" (GPT2LMHeadModel)
    layers: int
    hidden: int
    heads: int
    groups: int  # key/value heads
    head_dim: int
    ffn: int
    vocab: int  # real rows (our TP padding is dropped on export, restored on load)
    positions: int
    eps: float
    tied: bool
    bias: bool
    rope_base: float = 10000.0
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    norm_1p: bool = False  # ours only: norm weights stored as gamma - 1


def shape_of_config(model: dict, where: str) -> Shape:
    """The :class:`Shape` of our model section (``run.json``'s ``config.model``), or one refusal line.

    LlamaForCausalLM is RMSNorm + SwiGLU + RoPE (full rotary); GPT2LMHeadModel is LayerNorm + GELU
    + learned positions with one key/value head per query head. Any other mix has no counterpart.
    """
    norm, swiglu, pos = model["normalization"], bool(model["swiglu"]), model["position_embedding_type"]
    heads, groups = model["num_attention_heads"], model["num_query_groups"] or model["num_attention_heads"]
    head_dim = model["kv_channels"] or model["hidden_size"] // heads
    if (norm, swiglu, pos) == ("RMSNorm", True, "rope"):
        arch = "llama"
        if (model.get("rotary_percent") or 1.0) != 1.0:
            raise ArgumentError(f"{where}: --rotary-percent {model['rotary_percent']} (partial RoPE) has no "
                                "counterpart in LlamaForCausalLM, which rotates whole heads")
    elif (norm, swiglu, pos) == ("LayerNorm", False, "learned_absolute"):
        arch = "gpt2"
        if groups != heads or head_dim * heads != model["hidden_size"]:
            raise ArgumentError(f"{where}: GPT2LMHeadModel has one key/value head per query head and "
                                f"hidden = heads x head width; this model has {groups} key/value heads for {heads} "
                                f"heads of width {head_dim} (hidden {model['hidden_size']})")
    else:
        raise ArgumentError(f"{where}: {norm} + {'SwiGLU' if swiglu else 'GELU'} + {pos} positions has no Hugging Face "
                            "counterpart; LlamaForCausalLM is RMSNorm + SwiGLU + rope, GPT2LMHeadModel is LayerNorm "
                            "+ GELU + learned_absolute")
    return Shape(arch=arch, layers=model["num_layers"], hidden=model["hidden_size"], heads=heads, groups=groups,
                 head_dim=head_dim, ffn=model["ffn_hidden_size"], vocab=model["vocab_size"],
                 positions=model["max_position_embeddings"], eps=model["norm_epsilon"],
                 tied=not model["untie_embeddings_and_output_weights"], bias=not model["disable_bias_linear"],
                 rope_base=float(model.get("rotary_base") or 10000), hidden_dropout=model.get("hidden_dropout") or 0.0,
                 attention_dropout=model.get("attention_dropout") or 0.0, norm_1p=bool(model.get("apply_layernorm_1p")))


def shape_of_hf(config: dict, where: str) -> Shape:
    """The :class:`Shape` of an HF ``config.json`` (llama or gpt2), or one refusal line naming the setting."""
    kind = config.get("model_type")
    if kind == "llama":
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        for setting, value, wanted in (("hidden_act", config.get("hidden_act", "silu"), "silu"),
                                       ("rope_type", rope_type, "default"),
                                       ("mlp_bias", bool(config.get("mlp_bias")), bool(config.get("attention_bias")))):
            if value != wanted:
                raise ArgumentError(f"{where}: {setting} {value!r} has no counterpart in our Llama layout "
                                    f"(it needs {wanted!r})")
        heads = config["num_attention_heads"]
        return Shape(arch="llama", layers=config["num_hidden_layers"], hidden=config["hidden_size"], heads=heads,
                     groups=config.get("num_key_value_heads") or heads,
                     head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                     ffn=config["intermediate_size"], vocab=config["vocab_size"],
                     positions=config["max_position_embeddings"], eps=config.get("rms_norm_eps", 1e-6),
                     tied=bool(config.get("tie_word_embeddings", False)), bias=bool(config.get("attention_bias")),
                     rope_base=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
                     attention_dropout=float(config.get("attention_dropout") or 0.0))
    if kind == "gpt2":
        # (setting, what we need, transformers' default when config.json leaves it out)
        for setting, wanted, default in (("activation_function", "gelu", "gelu_new"),
                                         ("scale_attn_by_inverse_layer_idx", False, False),
                                         ("scale_attn_weights", True, True)):
            if config.get(setting, default) != wanted:
                hint = " (tanh-approximate GELU; our GPT layout uses the exact one)" \
                    if setting == "activation_function" else ""
                raise ArgumentError(f"{where}: {setting} {config.get(setting, default)!r}{hint} has no counterpart here")
        hidden, heads = config["n_embd"], config["n_head"]
        return Shape(arch="gpt2", layers=config["n_layer"], hidden=hidden, heads=heads, groups=heads,
                     head_dim=hidden // heads, ffn=config.get("n_inner") or 4 * hidden, vocab=config["vocab_size"],
                     positions=config["n_positions"], eps=config.get("layer_norm_epsilon", 1e-5),
                     tied=bool(config.get("tie_word_embeddings", True)), bias=True,
                     hidden_dropout=float(config.get("resid_pdrop", 0.0)),
                     attention_dropout=float(config.get("attn_pdrop", 0.0)))
    raise ArgumentError(f"{where}: model_type {kind!r} is not supported; llama (LlamaForCausalLM) and gpt2 "
                        "(GPT2LMHeadModel) are")


def hf_config(shape: Shape, special: dict) -> tuple[str, dict]:
    """``(architecture class name, config.json fields)``; ``special``: bos/eos/pad token ids (None: unknown)."""
    if shape.arch == "llama":
        return "LlamaForCausalLM", dict(
            vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
            num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.groups,
            head_dim=shape.head_dim, hidden_act="silu", max_position_embeddings=shape.positions,
            rms_norm_eps=shape.eps, tie_word_embeddings=shape.tied, attention_bias=shape.bias, mlp_bias=shape.bias,
            attention_dropout=shape.attention_dropout,
            rope_parameters={"rope_type": "default", "rope_theta": shape.rope_base}, **special)
    return "GPT2LMHeadModel", dict(
        vocab_size=shape.vocab, n_positions=shape.positions, n_embd=shape.hidden, n_layer=shape.layers,
        n_head=shape.heads, n_inner=shape.ffn, activation_function="gelu", layer_norm_epsilon=shape.eps,
        tie_word_embeddings=shape.tied, resid_pdrop=shape.hidden_dropout, embd_pdrop=shape.hidden_dropout,
        attn_pdrop=shape.attention_dropout, **special)


def model_flags(shape: Shape) -> tuple[str, list[str]]:
    """``(family, flags)``: the entry point (``pretrain_{family}.py``) and our flags that build ``shape``.

    Every setting is explicit, so the family's defaults cannot change it; a Llama layout whose
    embeddings are tied or whose linear layers have biases needs the gpt family (the llama family
    cannot switch those back on with a flag).
    """
    if not float(shape.rope_base).is_integer():
        raise ArgumentError(f"--from-hf: rope_theta {shape.rope_base} is not an integer; --rotary-base takes one")
    flags = ["--num-layers", shape.layers, "--hidden-size", shape.hidden, "--num-attention-heads", shape.heads,
             "--ffn-hidden-size", shape.ffn, "--seq-length", shape.positions, "--max-position-embeddings",
             shape.positions, "--vocab-size", shape.vocab, "--norm-epsilon", shape.eps,
             "--hidden-dropout", shape.hidden_dropout, "--attention-dropout", shape.attention_dropout]
    if shape.head_dim * shape.heads != shape.hidden:
        flags += ["--kv-channels", shape.head_dim]
    if shape.groups != shape.heads:
        flags += ["--group-query-attention", "--num-query-groups", shape.groups]
    if shape.arch == "llama":
        family = "llama" if not shape.tied and not shape.bias else "gpt"
        flags += ["--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
                  "--rotary-base", int(shape.rope_base)]
    else:
        family = "gpt"
        flags += ["--normalization", "LayerNorm", "--position-embedding-type", "learned_absolute"]
    flags += ([] if shape.tied else ["--untie-embeddings-and-output-weights"]) + \
        ([] if shape.bias else ["--disable-bias-linear"])
    return family, [str(f) for f in flags]


def split_qkv(qkv: torch.Tensor, shape: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our interleaved ``[ng * (np/ng + 2) * hn, ...]`` -> q ``[np * hn, ...]``, k, v ``[ng * hn, ...]``."""
    per_group = shape.heads // shape.groups
    grouped = qkv.reshape(shape.groups, per_group + 2, shape.head_dim, *qkv.shape[1:])
    q = grouped[:, :per_group].reshape(shape.heads * shape.head_dim, *qkv.shape[1:])
    k = grouped[:, per_group].reshape(shape.groups * shape.head_dim, *qkv.shape[1:])
    v = grouped[:, per_group + 1].reshape(shape.groups * shape.head_dim, *qkv.shape[1:])
    return q, k, v


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: Shape) -> torch.Tensor:
    """The inverse of :func:`split_qkv`."""
    rest = q.shape[1:]
    per_group = shape.heads // shape.groups
    parts = (q.reshape(shape.groups, per_group, shape.head_dim, *rest),
             k.reshape(shape.groups, 1, shape.head_dim, *rest), v.reshape(shape.groups, 1, shape.head_dim, *rest))
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def _layer_pairs(shape: Shape, i: int) -> list[tuple[str, str]]:
    """(our name, HF name) of the tensors of layer ``i`` that map one to one (besides a transpose)."""
    ours = LAYER.format(i)
    if shape.arch == "llama":
        hf = f"model.layers.{i}."
        pairs = [(f"{ours}input_layernorm.weight", f"{hf}input_layernorm.weight"),
                 (f"{ours}pre_mlp_layernorm.weight", f"{hf}post_attention_layernorm.weight"),
                 (f"{ours}self_attention.linear_proj.weight", f"{hf}self_attn.o_proj.weight"),
                 (f"{ours}mlp.linear_fc2.weight", f"{hf}mlp.down_proj.weight")]
        if shape.bias:
            pairs += [(f"{ours}self_attention.linear_proj.bias", f"{hf}self_attn.o_proj.bias"),
                      (f"{ours}mlp.linear_fc2.bias", f"{hf}mlp.down_proj.bias")]
        return pairs
    hf = f"transformer.h.{i}."
    return [(f"{ours}input_layernorm.{p}", f"{hf}ln_1.{p}") for p in ("weight", "bias")] + \
        [(f"{ours}pre_mlp_layernorm.{p}", f"{hf}ln_2.{p}") for p in ("weight", "bias")] + \
        [(f"{ours}self_attention.linear_proj.{p}", f"{hf}attn.c_proj.{p}") for p in ("weight", "bias")] + \
        [(f"{ours}mlp.linear_fc1.{p}", f"{hf}mlp.c_fc.{p}") for p in ("weight", "bias")] + \
        [(f"{ours}mlp.linear_fc2.{p}", f"{hf}mlp.c_proj.{p}") for p in ("weight", "bias")]


def _outer_pairs(shape: Shape) -> list[tuple[str, str]]:
    if shape.arch == "llama":
        pairs = [("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
                 ("decoder.final_layernorm.weight", "model.norm.weight")]
    else:
        pairs = [("embedding.word_embeddings.weight", "transformer.wte.weight"),
                 ("embedding.position_embeddings.weight", "transformer.wpe.weight"),
                 ("decoder.final_layernorm.weight", "transformer.ln_f.weight"),
                 ("decoder.final_layernorm.bias", "transformer.ln_f.bias")]
    return pairs + ([] if shape.tied else [("output_layer.weight", "lm_head.weight")])


VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")


def _conv1d(hf_name: str, shape: Shape) -> bool:
    """GPT-2's Conv1D weights are stored ``[in, out]``: every 2-D weight inside a block."""
    return shape.arch == "gpt2" and ".h." in hf_name and hf_name.endswith(".weight") and ".ln_" not in hf_name


def _pairs(shape: Shape) -> list[tuple[str, str]]:
    return _outer_pairs(shape) + [p for i in range(shape.layers) for p in _layer_pairs(shape, i)]


def _linear_parts(shape: Shape) -> tuple[str, ...]:
    return ("weight", "bias") if shape.bias or shape.arch == "gpt2" else ("weight",)


def _owned(tensors: dict) -> dict:
    """Every tensor contiguous in storage of its own: views (of a stacked layer tensor, of q/k/v or
    gate/up) are copied, since safetensors refuses tensors that share memory."""
    return {k: v.contiguous() if not v.is_contiguous() else v.clone() if v._base is not None else v
            for k, v in tensors.items()}


def to_hf(ours: dict, shape: Shape) -> dict:
    """Our tensors (see the module doc) -> the HF state dict of ``shape.arch`` (TP padding rows dropped).

    Linear biases that ours lacks (``--disable-bias-linear``) become zeros for GPT-2, which always
    has them: the same function.
    """
    def tensor(name):
        if name not in ours and shape.arch == "gpt2" and name.endswith(".bias"):
            weight = ours[name[:-len("bias")] + "weight"]
            return torch.zeros(weight.shape[0], dtype=weight.dtype)
        return ours[name]

    hf = {}
    for ours_name, hf_name in _pairs(shape):
        t = tensor(ours_name)
        if ours_name in VOCAB_ROWS:
            t = t[:shape.vocab]
        if shape.norm_1p and ours_name.endswith("layernorm.weight"):
            t = t + 1
        hf[hf_name] = t.t() if _conv1d(hf_name, shape) else t
    for i in range(shape.layers):
        ours_l = LAYER.format(i)
        for part in _linear_parts(shape):
            q, k, v = split_qkv(tensor(f"{ours_l}self_attention.linear_qkv.{part}"), shape)
            if shape.arch == "llama":
                gate, up = tensor(f"{ours_l}mlp.linear_fc1.{part}").chunk(2, dim=0)
                for proj, t in (("self_attn.q_proj", q), ("self_attn.k_proj", k), ("self_attn.v_proj", v),
                                ("mlp.gate_proj", gate), ("mlp.up_proj", up)):
                    hf[f"model.layers.{i}.{proj}.{part}"] = t
            else:
                fused = torch.cat([q, k, v], dim=0)
                hf[f"transformer.h.{i}.attn.c_attn.{part}"] = fused.t() if part == "weight" else fused
    return _owned(hf)


def from_hf(hf: dict, shape: Shape) -> dict:
    """The inverse of :func:`to_hf`: an HF state dict -> our tensors (``shape.vocab`` rows, no padding)."""
    def get(name):
        if name not in hf:
            raise ArgumentError(f"--from-hf: the weights have no {name}; is this a complete {shape.arch} checkpoint?")
        return hf[name]

    ours = {}
    for ours_name, hf_name in _pairs(shape):
        ours[ours_name] = get(hf_name).t() if _conv1d(hf_name, shape) else get(hf_name)
    for i in range(shape.layers):
        ours_l = LAYER.format(i)
        for part in _linear_parts(shape):
            if shape.arch == "llama":
                q, k, v = (get(f"model.layers.{i}.self_attn.{p}.{part}") for p in ("q_proj", "k_proj", "v_proj"))
                ours[f"{ours_l}mlp.linear_fc1.{part}"] = torch.cat(
                    [get(f"model.layers.{i}.mlp.gate_proj.{part}"), get(f"model.layers.{i}.mlp.up_proj.{part}")])
            else:
                fused = get(f"transformer.h.{i}.attn.c_attn.{part}")
                q, k, v = (fused.t() if part == "weight" else fused).chunk(3, dim=0)
            ours[f"{ours_l}self_attention.linear_qkv.{part}"] = merge_qkv(q, k, v, shape)
    return _owned(ours)
