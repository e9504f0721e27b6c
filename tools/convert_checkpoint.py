"""Our checkpoints <-> Hugging Face transformers model directories.

    python tools/convert_checkpoint.py --load runs/llama --to-hf hf/llama [--iteration 2000]
    python tools/convert_checkpoint.py --from-hf hf/released-llama --save runs/from_hf

Export (``--to-hf``): the ``torch_dist`` checkpoint of any TP/PP/DP layout (the marker's
iteration unless ``--iteration``), with the model's configuration from its ``run.json``, becomes
``LlamaForCausalLM`` (RMSNorm, SwiGLU, RoPE, GQA; tied or not, biases or not) or
``GPT2LMHeadModel`` (LayerNorm, GELU, learned positions): ``config.json``, ``model.safetensors``
(sharded above 5 GB, with its index) and the run's tokenizer as HF tokenizer files when
``run.json`` names one this tool knows (tools/hf_tokenizer.py). A model with no HF counterpart
is refused in one line. The vocabulary's TP padding rows are dropped.

Import (``--from-hf``): a ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` directory (safetensors or
``pytorch_model.bin``) becomes a weights-only checkpoint of ours at iteration 0 (format tag,
marker, ``run.json`` with the model section and the flags that build it). ``pretrain_*.py --load``
of it starts at iteration 0 with a fresh optimizer and schedule. The tool prints the flags.
Nothing is downloaded: both directions read and write local files only.
"""

if not __package__:  # run as a file: the repository root, not tools/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", ".."))

import dataclasses
import json
import os
import shutil
import sys
import time

import torch

from megatron_patch.errors import ArgumentError, one_line
from megatron_patch.hf_mapping import from_hf, hf_config, model_flags, shape_of_config, shape_of_hf, to_hf
from tools.cli import ToolParser, run_tool

SHARD_BYTES = 5 * 2**30  # safetensors files of at most this size (transformers' own default)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def log(message: str) -> None:
    print(f"[convert_checkpoint] {message}", file=sys.stderr, flush=True)


def _fresh_output(path: str, flag: str, keep_if: str) -> str:
    """``path.partial``, emptied, to write into; refuses a ``path`` that holds something other than ``keep_if``."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and \
            not os.path.exists(os.path.join(path, keep_if)):
        raise ArgumentError(f"{flag} {path}: exists and is not an earlier output of this tool; choose a new directory")
    partial = path.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    return partial


def _commit(partial: str, path: str) -> None:
    """Replace ``path`` by the complete ``partial`` directory."""
    if os.path.exists(path):
        shutil.rmtree(path)
    os.rename(partial, path)


def save_safetensors(tensors: dict, out: str) -> list[str]:
    """``tensors`` as ``model.safetensors``, or shards of at most :data:`SHARD_BYTES` with their index."""
    from safetensors.torch import save_file

    shards, size = [[]], 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {name: file for file, shard in zip(names, shards) for name in shard}}
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as handle:
            json.dump(index, handle, indent=1)
    for file, shard in zip(names, shards):
        save_file({name: tensors[name] for name in shard}, os.path.join(out, file), metadata={"format": "pt"})
    return names


def load_hf_weights(hf_dir: str) -> dict:
    """Every tensor of an HF model directory (safetensors, sharded or not, else ``pytorch_model.bin``)."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as handle:
            files = sorted(set(json.load(handle)["weight_map"].values()))
    elif os.path.exists(os.path.join(hf_dir, "model.safetensors")):
        files = ["model.safetensors"]
    elif os.path.exists(os.path.join(hf_dir, "pytorch_model.bin")):
        return torch.load(os.path.join(hf_dir, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    else:
        raise ArgumentError(f"--from-hf {hf_dir}: no model.safetensors(.index.json) or pytorch_model.bin there")
    from safetensors.torch import load_file

    tensors = {}
    for file in files:
        tensors.update(load_file(os.path.join(hf_dir, file)))
    return tensors


def _with_prefixes(tensors: dict, arch: str) -> dict:
    """The names of the ``*ForCausalLM`` class: a base model's files lack its ``model.``/``transformer.``."""
    base = "model." if arch == "llama" else "transformer."
    return {k if k.startswith((base, "lm_head.")) else base + k: v for k, v in tensors.items()}


def export(load: str, out: str, iteration: int | None = None, dtype: str | None = None) -> dict:
    """Write the HF directory ``out`` from checkpoint ``load``; returns a summary (iteration, class, files)."""
    from transformers import AutoConfig

    from megatron_patch.hf_checkpoint import read_model, read_run_record
    from tools.hf_tokenizer import export_tokenizer

    started = time.perf_counter()
    shape = shape_of_config(read_run_record(load)["config"]["model"], f"--load {load}")  # refusals first
    tensors, record, iteration = read_model(load, iteration)
    partial = _fresh_output(out, "--to-hf", keep_if="config.json")
    try:
        tokenizer, note = export_tokenizer(record["config"].get("data", {}), partial)
        hf = to_hf(tensors, shape)
        if dtype:
            hf = {k: v.to(DTYPES[dtype]) for k, v in hf.items()}
        unknown = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
        architecture, fields = hf_config(shape, tokenizer.special_ids if tokenizer else unknown)
        config = AutoConfig.for_model(shape.arch, architectures=[architecture], **fields)
        config.dtype = next(iter(hf.values())).dtype
        config.save_pretrained(partial)
        files = save_safetensors(hf, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _commit(partial, out)
    summary = {"iteration": iteration, "class": architecture, "files": files, "tensors": len(hf),
               "parameters": sum(t.numel() for t in hf.values()), "tokenizer": tokenizer.kind if tokenizer else None,
               "seconds": round(time.perf_counter() - started, 2)}
    log(f"wrote {out}: {architecture} from iteration {iteration} of {load}, {summary['parameters']:,} parameters, "
        f"tokenizer: {note}")
    return summary


def _tokenizer_flags(hf_dir: str) -> list[str]:
    """Our tokenizer flags for the tokenizer files an HF directory holds (none: the user passes them)."""
    if os.path.exists(os.path.join(hf_dir, "tokenizer.model")):
        return ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                os.path.abspath(os.path.join(hf_dir, "tokenizer.model"))]
    if os.path.exists(os.path.join(hf_dir, "tokenizer.json")):
        return ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", os.path.abspath(hf_dir)]
    return []


def resolved_sections(family: str, flags: list[str]) -> dict:
    """Our ``model`` and ``data`` sections (as run.json holds them) that ``flags`` resolve to."""
    from megatron_patch.arguments import parse_args
    from megatron_patch.config import DataConfig, ModelConfig, build_section

    args = parse_args(flags, family=family)
    args.padded_vocab_size = args.vocab_size  # the checkpoint holds the real rows; a run pads them for its TP
    return {"model": dataclasses.asdict(build_section(ModelConfig, args)),
            "data": dataclasses.asdict(build_section(DataConfig, args))}


def import_hf(hf_dir: str, save: str, dtype: str | None = None) -> dict:
    """Write a weights-only checkpoint of ours in ``save`` from the HF directory ``hf_dir``; returns its record."""
    from megatron_patch.checkpointing import MARKER
    from megatron_patch.hf_checkpoint import write_weights_only

    started = time.perf_counter()
    try:
        with open(os.path.join(hf_dir, "config.json")) as handle:
            hf_config_json = json.load(handle)
    except (OSError, ValueError) as err:
        raise ArgumentError(f"--from-hf {hf_dir}: no readable config.json ({one_line(err)}); pass a Hugging Face "
                            "model directory") from None
    shape = shape_of_hf(hf_config_json, f"--from-hf {hf_dir}")
    if os.path.exists(os.path.join(save, MARKER)):
        raise ArgumentError(f"--save {save}: holds checkpoints already; choose a new directory")
    ours = from_hf(_with_prefixes(load_hf_weights(hf_dir), shape.arch), shape)
    if dtype:
        ours = {k: v.to(DTYPES[dtype]) for k, v in ours.items()}
    family, flags = model_flags(shape)
    sections = resolved_sections(family, flags + _tokenizer_flags(hf_dir))
    # The flags must build exactly this model: the exporter reads the same section back.
    if shape_of_config(sections["model"], "--from-hf") != shape:
        raise AssertionError(f"model_flags {flags} resolve to {shape_of_config(sections['model'], '')}, not {shape}")
    record = {"start_iteration": 0, "imported_from": os.path.abspath(hf_dir), "family": family,
              "entry_point": f"pretrain_{family}.py", "model_flags": flags + _tokenizer_flags(hf_dir),
              "config": sections, "layout": {}}
    path = write_weights_only(save, ours, record)
    log(f"wrote {path} ({sum(t.numel() for t in ours.values()):,} parameters) in "
        f"{time.perf_counter() - started:.1f} s; train on it with:\n  python pretrain_{family}.py "
        f"{' '.join(record['model_flags'])} --load {save} --save NEW_DIR ...")
    return record


def _main(argv: list[str]) -> None:
    parser = ToolParser(prog="convert_checkpoint.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", help="our checkpoint directory (export)")
    parser.add_argument("--to-hf", help="the Hugging Face model directory to write (export)")
    parser.add_argument("--iteration", type=int, help="export this iteration (default: the latest)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="write the weights in this dtype (default: as read)")
    parser.add_argument("--from-hf", help="a Hugging Face model directory (import)")
    parser.add_argument("--save", help="the checkpoint directory to write (import)")
    args = parser.parse_args(argv)
    if bool(args.load) + bool(args.from_hf) != 1 or bool(args.load) != bool(args.to_hf) or \
            bool(args.from_hf) != bool(args.save):
        raise ArgumentError("pass --load CKPT_DIR --to-hf OUT_DIR (export) or --from-hf HF_DIR --save CKPT_DIR (import)")
    if args.load:
        export(args.load, args.to_hf, args.iteration, args.dtype)
    else:
        import_hf(args.from_hf, args.save, args.dtype)


def main(argv=None) -> None:
    run_tool(_main, argv)


if __name__ == "__main__":
    main()
