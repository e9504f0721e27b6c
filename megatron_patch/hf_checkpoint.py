"""Whole-model tensors in and out of our ``torch_dist`` checkpoints, for the Hugging Face converter.

Reading needs no model: megatron-core's ``torch_dist`` stores every tensor once with its global
shape (``load_tensors_metadata``), so the model's tensors of a checkpoint saved with any TP/PP/DP
layout load whole into one process. Layers of one shape are stored stacked (``decoder.layers.X``
holds ``[num_layers, ...]``); :func:`read_model` unstacks them into ``decoder.layers.{i}.X``, the
names of :mod:`megatron_patch.hf_mapping`, and maps Transformer Engine's fused-norm names
(``linear_qkv.layer_norm_weight``) to the local spec's (``input_layernorm.weight``).

Writing (:func:`write_weights_only`) stacks them back under the checkpoint's names into
``iter_0000000``, with our format tag, the marker and a ``run.json``, and no optimizer state: a
*weights-only* checkpoint, which ``--load`` starts from at iteration 0 with a fresh optimizer
(:func:`megatron_patch.checkpointing.resume`). The vocabulary keeps its real size: megatron-core
loads embedding and output rows into a TP-padded model with zeros in the padding rows.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor

from .checkpointing import FORMAT_TAG, MARKER, PARTIAL, LoopState, _read_common, _versions, checkpoint_dir, read_marker
from .errors import ArgumentError, one_line
from .files import write_atomically, write_json_atomically
from .launch import free_port

MODEL_PREFIXES = ("embedding.", "decoder.", "output_layer.")
# Transformer Engine's spec fuses the pre-attention and pre-MLP norms into the next linear layer;
# megatron-core's local spec saves its norms under these names too (sharded_state_dict_keys_map).
TE_NAMES = {"self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
            "self_attention.linear_qkv.layer_norm_bias": "input_layernorm.bias",
            "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
            "mlp.linear_fc1.layer_norm_bias": "pre_mlp_layernorm.bias"}
# Modules whose (empty, on the local spec) ``_extra_state`` every checkpoint holds per layer: loading asks for it.
EXTRA_STATE = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")
STACKED = re.compile(r"decoder\.layers\.(?!\d+\.)(.+)")


@contextlib.contextmanager
def single_process_group():
    """A gloo process group of one for dist_checkpointing outside a run (nothing when one exists)."""
    if torch.distributed.is_initialized():
        yield
        return
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                                         timeout=datetime.timedelta(minutes=30))
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def _cpu_device():
    """torch_dist's save synchronises the device and puts a flag on ``current_device()``; without
    CUDA those are a no-op and the CPU (what megatron_patch.cpu_compat does for a whole training
    process, here for one save only)."""
    if torch.cuda.is_available():
        yield
        return
    saved = torch.cuda.synchronize, torch.cuda.current_device
    torch.cuda.synchronize, torch.cuda.current_device = lambda device=None: None, lambda: torch.device("cpu")
    try:
        yield
    finally:
        torch.cuda.synchronize, torch.cuda.current_device = saved


def read_run_record(root: str, flag: str = "--load") -> dict:
    """``root/run.json``, the record of the run that saved the checkpoints there (one error line if absent)."""
    path = os.path.join(root, "run.json")
    try:
        with open(path) as handle:
            record = json.load(handle)
        record["config"]["model"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ArgumentError(f"{flag} {root}: no readable run.json with the model's configuration ({one_line(err)}); "
                            "copy the run's run.json beside its iter_* directories") from None
    return record


def unstack(stacked: dict, num_layers: int) -> dict:
    """Checkpoint keys -> one entry per layer under the local spec's names (see the module doc)."""
    out = {}
    for key, tensor in stacked.items():
        for te_name, local in TE_NAMES.items():
            if key.endswith(te_name):
                key = key[:-len(te_name)] + local
        match = STACKED.fullmatch(key)
        if match:
            if tensor.shape[0] != num_layers:
                raise ArgumentError(f"checkpoint tensor {key} holds {tensor.shape[0]} layers, run.json says "
                                    f"{num_layers}; is run.json this checkpoint's?")
            out.update({f"decoder.layers.{i}.{match.group(1)}": tensor[i] for i in range(num_layers)})
        else:
            out[key] = tensor
    return out


def read_model(root: str, iteration: int | None = None) -> tuple[dict, dict, int]:
    """``(tensors, run record, iteration)`` of checkpoint ``root`` (default: the marker's iteration).

    ``tensors`` is the whole model, one entry per layer, on the CPU in the checkpoint's dtype.
    """
    record = read_run_record(root)
    latest = read_marker(root)
    iteration = latest if iteration is None else iteration
    path = checkpoint_dir(root, iteration) if iteration is not None else None
    if path is None or not os.path.isdir(path):
        raise ArgumentError(f"--load {root}: no checkpoint of iteration {iteration} there"
                            f"{f' (the latest is {latest})' if latest is not None else ''}; pass --iteration of "
                            "an existing iter_* directory")
    _read_common(root, path)  # our format tag, or one error line
    with single_process_group():
        metadata = dist_checkpointing.load_tensors_metadata(path)
        wanted = {k: v for k, v in metadata.items() if k.startswith(MODEL_PREFIXES)}
        loaded = dist_checkpointing.load(wanted, path, validate_access_integrity=False)
    return unstack(loaded, record["config"]["model"]["num_layers"]), record, iteration


def stack(tensors: dict, num_layers: int) -> dict:
    """The inverse of :func:`unstack`: ``decoder.layers.{i}.X`` -> ``decoder.layers.X`` ``[num_layers, ...]``,
    the norms under the names checkpoints use (:data:`TE_NAMES`)."""
    checkpoint_names = {local: te for te, local in TE_NAMES.items()}
    out, layered = {}, {}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"decoder\.layers\.(\d+)\.(.+)", key)
        if match:
            name = checkpoint_names.get(match.group(2), match.group(2))
            layered.setdefault(name, {})[int(match.group(1))] = tensor
        else:
            out[key] = tensor
    for name, by_layer in layered.items():
        out[f"decoder.layers.{name}"] = torch.stack([by_layer[i] for i in range(num_layers)])
    return out


def write_weights_only(root: str, tensors: dict, record: dict) -> str:
    """Save ``tensors`` (one entry per layer) as a weights-only checkpoint in ``root``; returns its directory.

    ``record`` becomes ``root/run.json`` (it must hold ``config.model``, which the exporter and
    the training flags read). Written as a save of ours is: ``iter_0000000.partial``, renamed when
    complete, then the marker.
    """
    path = checkpoint_dir(root, 0)
    partial = path + PARTIAL
    os.makedirs(root, exist_ok=True)
    for stale in (partial, path):
        if os.path.exists(stale):
            shutil.rmtree(stale)
    os.makedirs(partial)
    stacked = stack(tensors, record["config"]["model"]["num_layers"])
    layers = record["config"]["model"]["num_layers"]
    sharded = {key: ShardedTensor.from_rank_offsets(key, tensor.contiguous(), replica_id=0)
               for key, tensor in stacked.items()}
    sharded.update({f"{key}/{i}": ShardedObject(key, None, (layers,), (i,), replica_id=0)
                    for key in (f"decoder.layers.{m}._extra_state" for m in EXTRA_STATE) for i in range(layers)})
    state = dataclasses.asdict(LoopState(weights_only=True))
    with single_process_group(), _cpu_device():
        dist_checkpointing.save({"model": sharded, "loop": state, "format": FORMAT_TAG}, partial)
    os.rename(partial, path)
    write_json_atomically(os.path.join(root, "run.json"), dict(record, versions=_versions()), indent=1)
    write_atomically(os.path.join(root, MARKER), "0")
    return path
