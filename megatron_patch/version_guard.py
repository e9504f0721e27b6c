"""Start-up check that the installed megatron-core is a tested release with every symbol and
signature we rely on.

The patch wraps megatron-core instead of forking it, so an upgrade can move or rename what we
call. Checked before any process group exists, so a mismatch is one clear error on every rank,
not a hang in a collective or a silent fallback. Extend ``REQUIRED`` when the patch starts to use
a new megatron-core symbol (a test checks that every ``from megatron.core... import`` in the
project is listed here); a group of symbols of another package (Megatron-LM's loop) gets a dict
of its own, checked with ``check_megatron_core(that_dict)``.
"""

import importlib
import inspect
import sys

# The releases the test suite runs on (``make test`` tests both stacks), each with the Python that
# setup.py installs it on; "0.19.*" is any 0.19 release (0.19.2 tested). Another release is
# refused even when its symbols match: the loss contract and checkpoint format are behaviour,
# which only the suite checks.
SUPPORTED_VERSIONS = {"0.16.1": "Python 3.10-3.11", "0.19.*": "Python >= 3.12"}
# The first Python of each range -> setup.py's megatron-core requirement there.
INSTALL = {(3, 12): "megatron-core>=0.19,<0.20", (3, 10): "megatron-core==0.16.1"}

# module -> {symbol: parameters its signature must have (empty: existence only)}; a dotted symbol
# is an attribute of one (a method of a class).
REQUIRED: dict[str, dict[str, tuple[str, ...]]] = {
    "megatron.core": {"parallel_state": (), "tensor_parallel": (), "dist_checkpointing": (), "package_info": ()},
    "megatron.core.tensor_parallel": {"random": ()},
    # The Hugging Face converter (megatron_patch/hf_checkpoint.py) reads whole tensors by their
    # global shapes and writes weights-only checkpoints without a model.
    "megatron.core.dist_checkpointing": {
        "ShardedTensor": (),
        "ShardedTensor.from_rank_offsets": ("key", "data", "replica_id"),
        "ShardedObject": ("key", "data", "global_shape", "global_offset", "replica_id"),
        "load_tensors_metadata": ("checkpoint_dir",),
        "load": ("sharded_state_dict", "checkpoint_dir", "validate_access_integrity"),
    },
    "megatron.core.parallel_state": {
        "initialize_model_parallel": (
            "tensor_model_parallel_size",
            "pipeline_model_parallel_size",
            "context_parallel_size",
        ),
        "destroy_model_parallel": (),
        "get_data_parallel_group": ("with_context_parallel",),
        "get_data_parallel_rank": ("with_context_parallel",),
        "get_data_parallel_world_size": ("with_context_parallel",),
        "is_pipeline_last_stage": (),
        "is_pipeline_first_stage": (),
        "get_context_parallel_group": (),
        "get_context_parallel_world_size": (),
    },
    "megatron.core.pipeline_parallel": {"get_forward_backward_func": ()},
    # checkpointing.fork_write_results_queue sets the writers' results queue megatron-core keeps.
    # (the submodule first: importing it makes it an attribute of its package)
    "megatron.core.dist_checkpointing.strategies.filesystem_async": {"_results_queue": ()},
    "megatron.core.dist_checkpointing.strategies": {"filesystem_async": ()},
    "megatron.core.utils": {"get_batch_on_this_cp_rank": ("batch", "cp_group")},
    "megatron.core.tokenizers": {"MegatronTokenizer": (),
                                 "MegatronTokenizer.from_pretrained": ("tokenizer_path", "metadata_path"),
                                 # NullTokenizer's library name ("null" in 0.16.1, "null-text" in 0.19).
                                 "megatron_tokenizer": ()},
    "megatron.core.enums": {"ModelType": ()},  # --trainer megatron-lm's pretrain(..., model_type, ...)
    "megatron.core.pipeline_parallel.schedules": {
        "forward_backward_no_pipelining": (
            "forward_step_func",
            "data_iterator",
            "model",
            "num_microbatches",
            "seq_length",
            "micro_batch_size",
            "forward_only",
        ),
        # Its handling of a 3-tuple (loss, num_tokens, report) is the loss contract we follow.
        "forward_step_calc_loss": ("loss_func", "config", "num_microbatches"),
    },
    "megatron.core.tensor_parallel.random": {
        "CudaRNGStatesTracker": (),
        "model_parallel_cuda_manual_seed": ("seed",),
        "get_cuda_rng_tracker": (),
    },
    "megatron.core.datasets.indexed_dataset": {"IndexedDatasetBuilder": ("bin_path", "dtype"), "IndexedDataset": (), "DType": ()},
    "megatron.core.datasets.blended_megatron_dataset_builder": {
        "BlendedMegatronDatasetBuilder": ("cls", "sizes", "is_built_on_rank", "config"),
    },
    "megatron.core.datasets.gpt_dataset": {
        "GPTDataset": (),
        "MockGPTDataset": (),
        "GPTDatasetConfig": ("random_seed", "sequence_length", "blend", "blend_per_split", "split", "tokenizer",
                             "reset_position_ids", "reset_attention_mask", "eod_mask_loss"),
    },
    "megatron.core.models.gpt": {
        "GPTModel": ("config", "transformer_layer_spec", "vocab_size", "max_sequence_length", "pre_process",
                     "post_process", "share_embeddings_and_output_weights", "position_embedding_type",
                     "rotary_percent", "rotary_base"),
    },
    "megatron.core.models.gpt.gpt_layer_specs": {
        "get_gpt_layer_local_spec": ("normalization",),
        "get_gpt_layer_with_transformer_engine_spec": (),
    },
    "megatron.core.transformer": {"TransformerConfig": ()},
    "megatron.core.transformer.torch_norm": {"WrappedTorchNorm": ()},
    "megatron.core.optimizer.clip_grads": {"clip_grad_by_total_norm_fp32": ("parameters", "max_norm", "total_norm")},
    "megatron.core.datasets.blended_dataset": {"BlendedDataset": ()},
    "megatron.core.transformer.module": {"Float16Module": ("config", "module")},
    "megatron.core.distributed": {
        "DistributedDataParallel": ("config", "ddp_config", "module"),
        "DistributedDataParallelConfig": ("grad_reduce_in_fp32", "use_distributed_optimizer", "overlap_grad_reduce",
                                          "overlap_param_gather", "bucket_size"),
        # --overlap-param-gather: parameters are gathered before evaluation and checkpoints.
        "DistributedDataParallel.disable_forward_pre_hook": ("param_sync",),
        "DistributedDataParallel.enable_forward_pre_hook": (),
        "finalize_model_grads": ("model", "num_tokens"),
    },
    "megatron.core.optimizer": {
        "OptimizerConfig": ("optimizer", "lr", "min_lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps",
                            "clip_grad", "bf16", "fp16", "use_distributed_optimizer"),
        "get_megatron_optimizer": ("config", "model_chunks"),
        "distrib_optimizer": (),
    },
    # --no-load-optim and weights-only checkpoints: fp16/bf16 main weights follow the loaded weights.
    "megatron.core.optimizer.optimizer": {"MegatronOptimizer.reload_model_params": ()},
    "megatron.core.optimizer.distrib_optimizer": {
        "DistributedOptimizer": (),
        # Used to create a fresh optimizer's state before a checkpoint is loaded into it.
        "DistributedOptimizer._init_optimizer_states_with_dummy_values": (),
    },
    "megatron.core.optimizer_param_scheduler": {
        "OptimizerParamScheduler": ("optimizer", "init_lr", "max_lr", "min_lr", "lr_warmup_steps", "lr_decay_steps",
                                    "lr_decay_style", "start_wd", "end_wd", "wd_incr_steps", "wd_incr_style"),
    },
}


class MegatronVersionError(RuntimeError):
    """The installed megatron-core lacks a symbol or signature the patch relies on."""


def installed_version() -> str:
    """megatron-core's release, e.g. ``0.19.2``; ``unknown`` when it cannot be imported.

    Without the ``+<commit>`` that 0.19's ``__version__`` appends: the git commit of whatever
    repository holds its site-packages (this project's, for a venv inside the checkout).
    """
    try:
        from megatron.core import package_info

        return package_info.__version__.split("+")[0]
    except ImportError:
        return "unknown"


def is_supported(version: str) -> bool:
    """Whether ``version`` is one of :data:`SUPPORTED_VERSIONS` (``0.19.*`` takes any 0.19 release)."""
    return any(version == v or (v.endswith(".*") and version.startswith(v[:-1])) for v in SUPPORTED_VERSIONS)


def install_requirement(python: tuple[int, int] | None = None) -> str:
    """setup.py's megatron-core requirement on ``python`` (default: this one)."""
    python = python or sys.version_info[:2]
    return next((req for first, req in sorted(INSTALL.items(), reverse=True) if python >= first), INSTALL[(3, 10)])


def supported_text() -> str:
    """``0.16.1 (Python 3.10-3.11), 0.19.x (Python >= 3.12) (pip install '...' on this Python)``."""
    versions = ", ".join(f"{v.replace('*', 'x')} ({python})" for v, python in SUPPORTED_VERSIONS.items())
    return f"{versions} (pip install '{install_requirement()}' on this Python)"


def _missing_params(obj, params: tuple[str, ...]) -> list[str]:
    if not params:
        return []
    try:
        have = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return list(params)
    return [p for p in params if p not in have]


_MISSING = object()


def find_mismatches(required: dict[str, dict[str, tuple[str, ...]]] = REQUIRED) -> list[str]:
    """Descriptions of every required module, symbol or parameter that is missing."""
    problems = []
    for module_name, symbols in required.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            problems.append(f"module {module_name} ({err})")
            continue
        for name, params in symbols.items():
            obj = module
            for part in name.split("."):
                obj = getattr(obj, part, _MISSING)  # a symbol whose value is None is there
            if obj is _MISSING:
                problems.append(f"{module_name}.{name}")
                continue
            missing = _missing_params(obj, params)
            if missing:
                problems.append(f"{module_name}.{name}() parameter(s) {', '.join(missing)}")
    return problems


def check_megatron_core(required: dict[str, dict[str, tuple[str, ...]]] = REQUIRED) -> None:
    """Raise :class:`MegatronVersionError` for an untested release, else naming the first missing
    symbols; either message names the supported versions and what to install."""
    version = installed_version()
    if version != "unknown" and not is_supported(version):  # unknown: the module check below names why
        raise MegatronVersionError(f"megatron-core {version} is not a tested release. Supported megatron-core "
                                   f"versions: {supported_text()}.")
    problems = find_mismatches(required)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        installed = "megatron-core" if version == "unknown" else f"megatron-core {version}"
        raise MegatronVersionError(
            f"{installed} lacks what this project relies on: {shown}. "
            f"Supported megatron-core versions: {supported_text()}."
        )


def require_megatron_core() -> None:
    """:func:`check_megatron_core` for entry points: the error as one line on stderr, exit code 2."""
    try:
        check_megatron_core()
    except MegatronVersionError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
