"""The resolved run configuration: typed, frozen sections, and the one pattern that defines flags.

Every flag is a field of a frozen dataclass, declared with :func:`flag`: its default, its help
text and its allowed range sit in the field's metadata, so parser, help and checks cannot drift
apart. :func:`add_flags` turns a section into an argparse group (Megatron-LM's flag names:
``num_layers`` is ``--num-layers``); :func:`build_section` turns the parsed values back into the
frozen section, refusing any value out of its field's range with one line that names the flag.
Fields declared with :func:`derived` are not flags: :mod:`megatron_patch.arguments` computes them
once (data-parallel size, micro-batches per step, padded vocabulary) before the sections freeze.
Nothing changes a section afterwards; the loop, the model and the data read only these objects.

The reweighting section (:class:`megatron_patch.loss.ReweightConfig`) and the weight-health
section (:class:`megatron_patch.health.WeightHealthConfig`) live beside the code that uses them
and are declared the same way.
"""

import argparse
import dataclasses
import types
import typing

from .errors import ArgumentError
from .presets import PRESETS


def flag(default=None, help: str = "", *, name: str | None = None, aliases: tuple[str, ...] = (),
         choices: tuple | None = None, minimum: float | None = None, above: float | None = None,
         maximum: float | None = None, below: float | None = None):
    """A config field that is also a command-line flag.

    Args:
        default: the value when the flag is not given (None: "not given", resolved later).
        help: the help text (``--help`` shows it with the default).
        name: the flag, when it is not ``--`` + the section's prefix + the field name with dashes.
        aliases: further spellings of the flag (Megatron-LM has a few).
        choices: the allowed values.
        minimum, maximum: inclusive bounds; above, below: exclusive bounds (None values pass).
    """
    bounds = dict(minimum=minimum, above=above, maximum=maximum, below=below)
    return dataclasses.field(default=default, metadata=dict(help=help, name=name, aliases=aliases,
                                                             choices=choices, **bounds))


def derived(default=None):
    """A config field computed during resolution (no flag)."""
    return dataclasses.field(default=default, metadata={"derived": True})


def _is_flag(field: dataclasses.Field) -> bool:
    return "help" in field.metadata


def flag_name(cls, field: dataclasses.Field) -> str:
    """The flag of ``field`` in section ``cls`` (``--num-layers``, ``--reweight-r``)."""
    prefix = getattr(cls, "FLAG_PREFIX", "")
    return field.metadata["name"] or f"--{prefix}{field.name.replace('_', '-')}"


def _dest(cls, field: dataclasses.Field) -> str:
    return flag_name(cls, field).lstrip("-").replace("-", "_")


def _base_type(hint):
    """``int | None`` -> ``int``; ``list[str] | None`` -> ``list``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def add_flags(parser: argparse.ArgumentParser, cls, title: str, description: str | None = None, *,
              only: tuple[str, ...] | None = None):
    """Add the flags of section ``cls`` (or its fields ``only``) to ``parser`` as one argument group; returns the group."""
    group = parser.add_argument_group(title, description)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not _is_flag(field) or (only is not None and field.name not in only):
            continue
        kind, meta = _base_type(hints[field.name]), field.metadata
        shown = "" if field.default in (None, False) else f" (default: {field.default})"
        options = dict(dest=_dest(cls, field), default=field.default, help=meta["help"] + shown)
        if kind is bool:
            options["action"] = "store_true"
        elif kind is list:
            options.update(nargs="*")
        else:
            options.update(type=kind, choices=meta["choices"])
        group.add_argument(flag_name(cls, field), *meta["aliases"], **options)
    return group


def check_ranges(section) -> None:
    """Refuse any flag value of ``section`` outside its field's bounds (one line naming the flag)."""
    for field in dataclasses.fields(section):
        value, meta = getattr(section, field.name), field.metadata
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for bound, ok, word in (("minimum", lambda v, b: v >= b, ">="), ("above", lambda v, b: v > b, ">"),
                                ("maximum", lambda v, b: v <= b, "<="), ("below", lambda v, b: v < b, "<")):
            if meta.get(bound) is not None and not ok(value, meta[bound]):
                raise ArgumentError(f"{flag_name(type(section), field)} {value}: must be {word} {meta[bound]}")


def build_section(cls, values: argparse.Namespace | dict):
    """The frozen section ``cls`` from parsed flags (by their dests) and derived values (by name)."""
    get = values.get if isinstance(values, dict) else lambda key, default=None: getattr(values, key, default)
    kwargs = {}
    for field in dataclasses.fields(cls):
        key = _dest(cls, field) if _is_flag(field) else field.name
        default = field.default if field.default is not dataclasses.MISSING else None
        kwargs[field.name] = get(key, get(field.name, default))
    return cls(**kwargs)


class _Checked:
    """Mixin: a section checks its ranges when it is built."""

    def __post_init__(self):
        check_ranges(self)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Checked):
    """The model's shape and layout (megatron-core's TransformerConfig and GPTModel arguments)."""

    model: str | None = flag(None, "shape preset; explicit flags override it", choices=tuple(sorted(PRESETS)))
    num_layers: int | None = flag(None, "transformer layers", minimum=1)
    hidden_size: int | None = flag(None, "hidden width", minimum=1)
    num_attention_heads: int | None = flag(None, "attention heads", minimum=1)
    ffn_hidden_size: int | None = flag(None, "MLP width (default: 4h, or 2/3 of 4h rounded to 64 for SwiGLU)", minimum=1)
    seq_length: int | None = flag(None, "tokens per sample", minimum=1)
    max_position_embeddings: int | None = flag(None, "positions the model holds (default: --seq-length)", minimum=1)
    vocab_size: int | None = flag(None, "vocabulary size (default: the tokenizer's)", minimum=1)
    kv_channels: int | None = flag(None, "width of one attention head (default: h / heads)", minimum=1)
    num_query_groups: int | None = flag(None, "key/value heads with --group-query-attention", minimum=1)
    group_query_attention: bool = flag(False, "use --num-query-groups key/value heads (default 1, as in Megatron-LM)")
    make_vocab_size_divisible_by: int = flag(128, "pad the vocabulary to a multiple of this x TP", minimum=1)
    normalization: str | None = flag(None, "norm layer", choices=("LayerNorm", "RMSNorm"))
    norm_epsilon: float | None = flag(None, "epsilon of the norms", above=0)
    swiglu: bool | None = flag(None, "SwiGLU MLP (else GELU)")
    position_embedding_type: str | None = flag(None, "positions", choices=("learned_absolute", "rope"))
    no_position_embedding: bool = flag(False, "Megatron-LM's older spelling of 'no learned positions'; valid with rope only")
    rotary_base: int | None = flag(None, "RoPE base (default 10000)", minimum=1)
    rotary_percent: float | None = flag(None, "fraction of each head RoPE rotates (default 1.0)", above=0, maximum=1)
    untie_embeddings_and_output_weights: bool | None = flag(None, "separate output layer (else tied to the embedding)")
    disable_bias_linear: bool | None = flag(None, "no biases in the linear layers")
    apply_layernorm_1p: bool = flag(False, "norm weights stored as (gamma - 1), initialised at 0 (needs Transformer Engine)")
    cross_entropy_loss_fusion: bool = flag(False, "fused cross entropy (still per token; checked at start-up)")
    cross_entropy_fusion_impl: str = flag("native", "fused cross entropy implementation", choices=("native", "te"))
    init_method_std: float = flag(0.02, "standard deviation of the initial weights", minimum=0)
    transformer_impl: str = flag("transformer_engine", "layer spec: Transformer Engine's when it imports (else "
                                 "megatron-core's local one), or local", choices=("transformer_engine", "local"))
    hidden_dropout: float | None = flag(None, "dropout after attention and MLP", minimum=0, below=1)
    attention_dropout: float | None = flag(None, "dropout of the attention probabilities", minimum=0, below=1)
    family: str = derived("llama")  # the entry point's layout defaults: llama or gpt
    padded_vocab_size: int | None = derived()  # the vocabulary padded for TP (the embedding's rows)


@dataclasses.dataclass(frozen=True)
class ParallelConfig(_Checked):
    """How the model and the batch are spread over processes, and the DDP communication options."""

    tensor_model_parallel_size: int = flag(1, "tensor-parallel ranks", minimum=1)
    pipeline_model_parallel_size: int = flag(1, "pipeline stages", minimum=1)
    context_parallel_size: int = flag(1, "context-parallel ranks (1 only: sequences are not split)", minimum=1)
    sequence_parallel: bool = flag(False, "split TP regions along the sequence (needs TP > 1 and TE/apex norms)")
    use_distributed_optimizer: bool = flag(False, "shard optimizer state over data parallelism")
    overlap_grad_reduce: bool = flag(False, "reduce gradient buckets while the backward pass runs")
    overlap_param_gather: bool = flag(False, "gather updated parameters during the next forward pass "
                                             "(needs --use-distributed-optimizer)")
    ddp_bucket_size: int | None = flag(None, "parameters per gradient bucket with --overlap-grad-reduce "
                                             "(megatron-core's default if unset)", minimum=1)
    distributed_timeout_minutes: float = flag(10, "timeout of collectives before a hung rank fails the job", above=0)
    world_size: int = derived(1)
    data_parallel_size: int = derived(1)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Checked):
    """Where the tokens come from: indexed datasets, the blend, the tokenizer."""

    data_path: list[str] | None = flag(None, "[weight] prefix [weight prefix ...]; weights are sampling "
                                             "probabilities. Split by --split unless --valid-data-path is given "
                                             "(then all of it trains)", aliases=("--train-data-path",))
    valid_data_path: list[str] | None = flag(None, "validation prefixes, one set per domain, independent of the "
                                                   "training weights")
    split: str = flag("969,30,1", "train,valid,test shares of each --data-path prefix")
    mock_data: bool = flag(False, "random tokens instead of a dataset")
    domain_weights: str | None = flag(None, "weight the --data-path prefixes by domain name: the paper's uniform, "
                                            "DoGE or DoReMi weights (megatron_patch/domains.py)",
                                      choices=("uniform", "doge", "doremi"))
    tokenizer_type: str = flag("SentencePieceTokenizer", "tokenizer kind (megatron_patch/tokenizer.py)",
                               choices=("SentencePieceTokenizer", "GPT2BPETokenizer", "HuggingFaceTokenizer",
                                        "TikTokenizer", "NullTokenizer"))
    tokenizer_model: str | None = flag(None, "SentencePiece .model, Hugging Face tokenizer.json (or its directory), "
                                             "or megatron-core's tiktoken JSON")
    vocab_file: str | None = flag(None, "GPT2BPETokenizer: GPT-2's vocab.json")
    merge_file: str | None = flag(None, "GPT2BPETokenizer: GPT-2's merges.txt")
    tiktoken_pattern: str = flag("v2", "TikTokenizer: megatron-core's split pattern", choices=("v1", "v2"))
    tiktoken_num_special_tokens: int = flag(1000, "TikTokenizer: special ids before the ranks", minimum=7)
    data_cache_path: str | None = flag(None, "where megatron-core caches the dataset indices")
    num_workers: int = flag(0, "DataLoader worker processes", minimum=0)


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_Checked):
    """Optimization and schedule: batch sizes, steps, learning rate, Adam, precision, seed, exits."""

    micro_batch_size: int = flag(1, "samples per data-parallel rank and micro-batch", minimum=1)
    global_batch_size: int | None = flag(None, "samples per optimizer step (default: micro batch x DP)", minimum=1)
    train_iters: int | None = flag(None, "optimizer steps", minimum=1)
    lr: float = flag(3e-4, "peak learning rate", minimum=0)
    min_lr: float = flag(0.0, "learning rate at the end of the decay", minimum=0)
    lr_decay_style: str = flag("cosine", "learning-rate decay", choices=("constant", "linear", "cosine"))
    lr_warmup_iters: int = flag(0, "linear warm-up steps", minimum=0)
    lr_warmup_fraction: float | None = flag(None, "warm up over this fraction of --lr-decay-iters (instead of "
                                                  "--lr-warmup-iters)", minimum=0, below=1)
    lr_decay_iters: int | None = flag(None, "steps of the decay (default: --train-iters)", minimum=1)
    weight_decay: float = flag(0.1, "decoupled weight decay", minimum=0)
    clip_grad: float = flag(1.0, "global gradient-norm clip (0: off)", minimum=0)
    adam_beta1: float = flag(0.9, "Adam beta1", minimum=0, below=1)
    adam_beta2: float = flag(0.95, "Adam beta2", minimum=0, below=1)
    adam_eps: float = flag(1e-8, "Adam epsilon", above=0)
    optimizer: str = flag("adam", "Adam with decoupled weight decay", choices=("adam",))
    bf16: bool = flag(False, "bf16 parameters and compute, fp32 master weights")
    fp16: bool = flag(False, "fp16 parameters and compute with loss scaling")
    trainer: str = flag("megatron-core", "the training loop: megatron-core (this project's loop on megatron-core "
                                         "parts) or megatron-lm (Megatron-LM's own pretrain, megatron.training; "
                                         "megatron-core >= 0.17)", choices=("megatron-core", "megatron-lm"))
    seed: int = flag(1234, "seed of python, numpy, torch (pipeline stage p uses seed + 100 p)", minimum=0)
    calculate_per_token_loss: bool = flag(False, "normalise by the step's tokens instead of per micro-batch")
    exit_interval: int | None = flag(None, "stop after an iteration divisible by this", minimum=1)
    exit_duration_in_mins: float | None = flag(None, "save and stop after this many minutes", minimum=0)
    exit_signal_handler: bool = flag(False, "save and stop on SIGTERM")
    num_microbatches: int = derived(1)  # global batch / (micro batch x DP)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(_Checked):
    """Saving and resuming."""

    save: str | None = flag(None, "checkpoint directory to write")
    load: str | None = flag(None, "checkpoint directory to resume from (the same as --save: fresh start when empty)")
    save_interval: int | None = flag(None, "save every this many iterations (and at the end)", minimum=1)
    no_load_optim: bool = flag(False, "load weights only: fresh optimizer and LR schedule")
    no_load_rng: bool = flag(False, "do not restore the random states")
    ckpt_format: str = flag("torch_dist", "megatron-core dist_checkpointing, the only format here",
                            choices=("torch_dist",))
    override_data_blend: bool = flag(False, "allow --load with a data blend that differs from the checkpoint's")


@dataclasses.dataclass(frozen=True)
class LoggingConfig(_Checked):
    """What the run reports, and when: console lines, validation, metrics file, tensorboard, wandb."""

    log_interval: int = flag(100, "iterations per console line and metrics record", minimum=1)
    eval_interval: int = flag(1000, "iterations between validations (and at the end)", minimum=1)
    eval_iters: int = flag(10, "validation batches per domain (0: no validation)", minimum=0)
    tensorboard_dir: str | None = flag(None, "write tensorboard events here")
    wandb_project: str | None = flag(None, "log to this wandb project")
    wandb_exp_name: str | None = flag(None, "wandb run name")
    metrics_file: str | None = flag(None, "JSON lines of the logged metrics (docs/architecture.md)")
    dry_run: bool = flag(False, "print the resolved configuration, parameter count, tokens per step and memory "
                                "per GPU, then exit")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run is, resolved once at start-up (:func:`megatron_patch.arguments.resolve_config`)."""

    model: ModelConfig
    parallel: ParallelConfig
    data: DataConfig
    training: TrainingConfig
    checkpoint: CheckpointConfig
    logging: LoggingConfig
    reweight: typing.Any  # megatron_patch.loss.ReweightConfig
    health: typing.Any  # megatron_patch.health.WeightHealthConfig

    def as_dict(self) -> dict:
        """Every section's fields as plain values (for the run record, wandb, ``--dry-run``)."""
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}
