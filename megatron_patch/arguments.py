"""Command-line flags with Megatron-LM's names and meanings, resolved once into a :class:`RunConfig`.

Values resolve in this order: an explicit flag, else the ``--model`` preset, else the family
default (llama or gpt), else the flag's default. Flags that only tune kernels on hardware we do
not have are accepted and reported once as having no effect; any other unknown flag is an error.
:func:`resolve_config` checks the flags against each other and the world size, derives the layout
(data-parallel size, micro-batches per step, padded vocabulary) and freezes the sections; every
refusal is one :class:`ArgumentError` line naming the flag and what to change.
"""

import argparse
import math
import os

from .config import (CheckpointConfig, DataConfig, LoggingConfig, ModelConfig, ParallelConfig, RunConfig,
                     TrainingConfig, add_flags, build_section)
from .errors import ArgumentError
from .health import WeightHealthConfig
from .loss import ReweightConfig, check_reweighting_supported
from .model import transformer_engine_available
from .presets import FAMILY_DEFAULTS, PRESETS
from .domains import weighted_blend
from .tokenizer import build_tokenizer, tokenizer_settings

# RunConfig field -> (section, argparse group title).
SECTIONS = {
    "model": (ModelConfig, "model"),
    "parallel": (ParallelConfig, "parallelism"),
    "data": (DataConfig, "data"),
    "training": (TrainingConfig, "training"),
    "checkpoint": (CheckpointConfig, "checkpoints"),
    "logging": (LoggingConfig, "logging"),
    "reweight": (ReweightConfig, "reweighting: online loss-based per-sample reweighting (Sow et al.)"),
    "health": (WeightHealthConfig, "weight health: warn when the reweighting collapses onto few samples"),
}


class _Parser(argparse.ArgumentParser):
    """argparse's own complaints (a bad choice, a value that is not a number) as one-line errors.

    Stock argparse prints the usage and exits; raising instead lets the entry points print every
    flag error the same way, as one line with exit status 2.
    """

    def error(self, message):
        raise ArgumentError(message)


# Upstream flags that only select kernels, fusions, overlap, fp8 recipes or I/O modes on GPUs:
# accepted so that Megatron-LM launch scripts run unchanged, and logged once as "has no effect here".
# Flags that change the math (--apply-layernorm-1p, --cross-entropy-loss-fusion, ...) are real
# flags below, never in these lists.
NO_EFFECT_FLAGS = (
    "--use-flash-attn", "--bias-gelu-fusion",
    "--no-bias-gelu-fusion", "--bias-swiglu-fusion", "--no-bias-swiglu-fusion", "--masked-softmax-fusion",
    "--no-masked-softmax-fusion", "--bias-dropout-fusion", "--no-bias-dropout-fusion", "--no-rope-fusion",
    "--attention-softmax-in-fp32", "--accumulate-allreduce-grads-in-fp32",
    "--use-mcore-models", "--no-gradient-accumulation-fusion", "--use-fused-rmsnorm",
    "--no-async-tensor-model-parallel-allreduce", "--tp-comm-overlap", "--manual-gc", "--fp8-param-gather",
    "--no-create-attention-mask-in-dataloader", "--no-mmap-bin-files",
)
NO_EFFECT_VALUED_FLAGS = ("--fp8-format", "--fp8-recipe", "--fp8-margin", "--fp8-interval",
                          "--fp8-amax-history-len", "--fp8-amax-compute-algo", "--attention-backend",
                          "--manual-gc-interval", "--empty-unused-memory-level")

# Upstream flags we do not support, with what to do instead (the error names the flag).
UNSUPPORTED_HINTS = {
    "--train-samples": "use --train-iters (steps of --global-batch-size samples)",
    "--lr-decay-samples": "use --lr-decay-iters",
    "--lr-warmup-samples": "use --lr-warmup-iters or --lr-warmup-fraction",
    "--rampup-batch-size": "batch-size ramp-up is not supported; use a fixed --global-batch-size",
    "--recompute-activations": "activation recomputation is not supported; lower --micro-batch-size or raise TP/PP",
    "--recompute-granularity": "activation recomputation is not supported; lower --micro-batch-size or raise TP/PP",
    "--fp16-lm-cross-entropy": "the cross entropy is computed in fp32 here; drop the flag",
    "--grad-reduce-in-bf16": "gradients are reduced in fp32 here; drop the flag",
    "--decoupled-lr": "one learning rate for all parameters here; drop the flag",
    "--recompute-method": "activation recomputation is not supported; lower --micro-batch-size or raise TP/PP",
    "--recompute-num-layers": "activation recomputation is not supported; lower --micro-batch-size or raise TP/PP",
    "--finetune": "not supported yet: the loop always resumes the checkpoint's iteration; load weights with "
                  "--load DIR --no-load-optim --no-load-rng",
    "--num-experts": "mixture-of-experts models are not supported",
}

# Shape/model flags that presets and families fill in: parser default None means "not given".
_MODEL_DEFAULTS = dict(
    num_layers=None, hidden_size=None, num_attention_heads=None, ffn_hidden_size=None,
    seq_length=None, max_position_embeddings=None, vocab_size=None, kv_channels=None,
    normalization=None, norm_epsilon=None, swiglu=None, position_embedding_type=None,
    rotary_base=10000, rotary_percent=1.0, untie_embeddings_and_output_weights=None,
    disable_bias_linear=None, hidden_dropout=None, attention_dropout=None,
)


def build_parser(family: str) -> argparse.ArgumentParser:
    """Every flag: one argparse group per config section, plus the accepted no-effect flags."""
    p = _Parser(prog=f"pretrain_{family}.py", allow_abbrev=False,
                description="megatron-core pretraining with online loss-based sample reweighting")
    for cls, title in SECTIONS.values():
        add_flags(p, cls, title)
    g = p.add_argument_group("accepted for Megatron-LM compatibility, no effect here")
    for flag in NO_EFFECT_FLAGS:
        g.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in NO_EFFECT_VALUED_FLAGS:
        g.add_argument(flag, default=None, help=argparse.SUPPRESS)
    return p


def no_effect_flags_given(argv, config: RunConfig) -> list[str]:
    """The accepted-but-inert flags in ``argv`` (to log once), incl. ``--sequence-parallel`` without TP."""
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    inert = [f for f in (*NO_EFFECT_FLAGS, *NO_EFFECT_VALUED_FLAGS) if f in given]
    if "--sequence-parallel" in given and not config.parallel.sequence_parallel:
        inert.append("--sequence-parallel")
    return inert


def parse_args(argv=None, *, family: str = "llama") -> argparse.Namespace:
    """Parse ``argv`` and fill in presets and family defaults (the working namespace of resolution)."""
    if family not in FAMILY_DEFAULTS:
        raise ArgumentError(f"unknown model family {family!r}; use llama or gpt")
    args, unknown = build_parser(family).parse_known_args(argv)
    flags = [u.split("=")[0] for u in unknown if u.startswith("-")]
    if unknown:
        hints = "; ".join(f"{f}: {UNSUPPORTED_HINTS[f]}" for f in flags if f in UNSUPPORTED_HINTS)
        raise ArgumentError(f"unsupported flag(s) {' '.join(flags or unknown)}"
                            f"{' (' + hints + ')' if hints else ''}; see docs/flags.md for the supported ones")
    args.family = family
    resolved = dict(FAMILY_DEFAULTS[family])
    resolved.update(PRESETS.get(args.model) or {})
    for name, value in resolved.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    for name, value in _MODEL_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    if args.ffn_hidden_size is None and args.hidden_size is not None:
        # Megatron-LM's rule: SwiGLU has two input projections, so 2/3 of 4h keeps the parameter
        # count of a 4h GELU MLP, rounded down to a multiple of 64.
        args.ffn_hidden_size = int(4 * args.hidden_size * 2 / 3 / 64) * 64 if args.swiglu else 4 * args.hidden_size
    if args.group_query_attention:
        args.num_query_groups = 1 if args.num_query_groups is None else args.num_query_groups
    elif args.num_query_groups is not None and args.num_query_groups != args.num_attention_heads:
        raise ArgumentError(f"--num-query-groups {args.num_query_groups} needs --group-query-attention "
                            "(Megatron-LM would ignore it); add --group-query-attention or drop --num-query-groups")
    else:
        args.num_query_groups = args.num_attention_heads
    if args.lr_warmup_fraction is not None and args.lr_warmup_iters:
        raise ArgumentError("--lr-warmup-fraction and --lr-warmup-iters are exclusive; pass one")
    if args.no_position_embedding and args.position_embedding_type != "rope":
        raise ArgumentError("--no-position-embedding leaves the model without positions; "
                            "pass --position-embedding-type rope with it")
    return args


def sections(args: argparse.Namespace) -> dict:
    """The frozen sections of ``args`` (each refuses its out-of-range values, naming the flag)."""
    return {name: build_section(cls, args) for name, (cls, _) in SECTIONS.items()}


def resolve_config(argv=None, *, family: str = "llama", world_size: int = 1, with_tokenizer: bool = True):
    """Flags -> ``(RunConfig, tokenizer)``: parsed, checked and derived once, then frozen.

    The tokenizer is built (and its vocabulary sets the model's) unless ``--dry-run`` or
    ``with_tokenizer`` is False; it is None then.
    """
    args = parse_args(argv, family=family)
    sections(args)  # ranges first: the checks below may divide by a size
    validate_args(args, world_size)
    tokenizer = None
    if with_tokenizer and not args.dry_run:
        tokenizer = build_tokenizer(**tokenizer_settings(args), vocab_size=args.vocab_size)
        if args.vocab_size is not None and tokenizer.vocab_size > args.vocab_size:
            source = "--vocab-file" if args.tokenizer_type == "GPT2BPETokenizer" else "--tokenizer-model"
            raise ArgumentError(f"{source} has {tokenizer.vocab_size} tokens, more than --vocab-size "
                                f"{args.vocab_size}; raise --vocab-size or drop it to take the tokenizer's")
        args.vocab_size = args.vocab_size or tokenizer.vocab_size
    if args.vocab_size is not None:
        args.padded_vocab_size = padded_vocab_size(args.vocab_size, args.make_vocab_size_divisible_by,
                                                   args.tensor_model_parallel_size)
    config = RunConfig(**sections(args))
    check_reweighting_supported(config.reweight, calculate_per_token_loss=config.training.calculate_per_token_loss)
    return config, tokenizer


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ArgumentError(message)


def validate_args(args: argparse.Namespace, world_size: int) -> None:
    """Check the flags against each other and the world size; derive the layout fields.

    Sets ``world_size``, ``data_parallel_size``, ``global_batch_size`` (when not given),
    ``num_microbatches``, ``lr_decay_iters``, ``lr_warmup_iters`` (from a fraction).
    """
    for name in ("num_layers", "hidden_size", "num_attention_heads", "seq_length"):
        _require(getattr(args, name) is not None,
                 f"--{name.replace('_', '-')} is not set; pass it or choose a --model preset ({', '.join(sorted(PRESETS))})")
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    if cp > 1:
        # megatron-core's local attention has no context parallelism (it asserts CP == 1).
        _require(args.transformer_impl == "transformer_engine" and transformer_engine_available(),
                 f"--context-parallel-size {cp} needs Transformer Engine's attention, which does not import here "
                 "(CPU, or no transformer_engine) or is turned off by --transformer-impl local; "
                 "use --context-parallel-size 1 and TP/PP for memory")
        _require(args.seq_length % (2 * cp) == 0,
                 f"--seq-length {args.seq_length} is not divisible by 2 x --context-parallel-size {cp} "
                 "(each CP rank holds two chunks of every sequence); change one of them")
    if args.sequence_parallel and tp == 1:
        # As Megatron-LM does: sequence parallelism splits TP regions, so without TP it is off.
        args.sequence_parallel = False
    _require(world_size % (tp * pp * cp) == 0,
             f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
             f"--pipeline-model-parallel-size {pp} x --context-parallel-size {cp}; change them or the number of processes")
    _require(args.num_attention_heads % tp == 0,
             f"--tensor-model-parallel-size {tp} does not divide --num-attention-heads {args.num_attention_heads}")
    _require(args.num_attention_heads % args.num_query_groups == 0,
             f"--num-query-groups {args.num_query_groups} does not divide --num-attention-heads {args.num_attention_heads}")
    _require(args.num_query_groups % tp == 0,
             f"--tensor-model-parallel-size {tp} does not divide --num-query-groups {args.num_query_groups}")
    _require(args.num_layers % pp == 0,
             f"--pipeline-model-parallel-size {pp} does not divide --num-layers {args.num_layers}")
    _require(args.hidden_size % args.num_attention_heads == 0 or args.kv_channels is not None,
             f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads {args.num_attention_heads}; set --kv-channels")
    if args.position_embedding_type == "learned_absolute":
        _require(args.seq_length <= args.max_position_embeddings,
                 f"--seq-length {args.seq_length} is above --max-position-embeddings {args.max_position_embeddings}; "
                 "raise --max-position-embeddings or shorten --seq-length")
    _require(not (args.bf16 and args.fp16), "--bf16 and --fp16 are exclusive; pass one")
    _require(not args.overlap_param_gather or args.use_distributed_optimizer,
             "--overlap-param-gather needs --use-distributed-optimizer; add it or drop --overlap-param-gather")
    dp = world_size // (tp * pp * cp)
    args.world_size, args.data_parallel_size = world_size, dp
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    _require(args.global_batch_size % (args.micro_batch_size * dp) == 0,
             f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
             f"{args.micro_batch_size} x data-parallel size {dp}; use a multiple of {args.micro_batch_size * dp}")
    args.num_microbatches = args.global_batch_size // (args.micro_batch_size * dp)
    _require(args.train_iters is not None or args.dry_run, "--train-iters is not set; pass the number of optimizer steps")
    args.lr_decay_iters = args.lr_decay_iters or args.train_iters
    if args.lr_warmup_fraction is not None and args.lr_decay_iters is not None:
        # Upstream's meaning, exactly: a fraction of the decay steps (it may end mid-iteration).
        args.lr_warmup_iters = args.lr_warmup_fraction * args.lr_decay_iters
    if args.lr_warmup_iters and args.lr_decay_iters is not None:
        _require(args.lr_warmup_iters < args.lr_decay_iters,
                 f"--lr-warmup-iters {args.lr_warmup_iters} is not below the decay's {args.lr_decay_iters} iterations "
                 "(--lr-decay-iters, default --train-iters); shorten the warm-up")
    _require(args.min_lr <= args.lr, f"--min-lr {args.min_lr} is above --lr {args.lr}")
    split = split_fractions(args.split)
    # The training part of each prefix comes from --split unless --valid-data-path supplies the
    # validation sets; an empty training part would leave megatron-core's sampler looping forever.
    _require(split[0] > 0 or args.mock_data or args.valid_data_path,
             f"--split {args.split} gives no training part; put a positive first number (e.g. 969,30,1)")
    if args.save_interval is not None:
        _require(args.save is not None, "--save-interval needs --save DIR")
    if not args.dry_run and not args.mock_data:
        _require(bool(args.data_path), "--data-path is not set; pass [weight] prefix ... or --mock-data")
        if args.tokenizer_type == "GPT2BPETokenizer":
            _require(args.vocab_file is not None and args.merge_file is not None,
                     "--tokenizer-type GPT2BPETokenizer needs --vocab-file (vocab.json) and --merge-file (merges.txt)")
        else:
            _require(args.tokenizer_model is not None or args.tokenizer_type == "NullTokenizer",
                     f"--tokenizer-model is not set; pass the file of --tokenizer-type {args.tokenizer_type}")
    if args.domain_weights is not None:
        args.data_path = weighted_blend(args.domain_weights, args.data_path)
    _check_paths(args)


def _check_paths(args: argparse.Namespace) -> None:
    """Files and directories of the wrong kind, before anything starts (each names its flag)."""
    exists = os.path.exists if args.tokenizer_type == "HuggingFaceTokenizer" else os.path.isfile
    for flag, path in (("--tokenizer-model", args.tokenizer_model), ("--vocab-file", args.vocab_file),
                       ("--merge-file", args.merge_file)):
        _require(path is None or exists(path), f"{flag} {path}: no such file")
    for flag, path in (("--save", args.save), ("--load", args.load), ("--tensorboard-dir", args.tensorboard_dir),
                       ("--data-cache-path", args.data_cache_path)):
        _require(path is None or not os.path.exists(path) or os.path.isdir(path),
                 f"{flag} {path}: is a file, not a directory; pass a directory")
    if args.metrics_file is not None:
        _require(not os.path.isdir(args.metrics_file),
                 f"--metrics-file {args.metrics_file}: is a directory; pass a file path such as "
                 f"{os.path.join(args.metrics_file, 'metrics.jsonl')}")
    for flag, path in (("--save", args.save), ("--metrics-file", args.metrics_file and os.path.dirname(
            os.path.abspath(args.metrics_file))), ("--tensorboard-dir", args.tensorboard_dir)):
        if path is not None:
            _check_writable(flag, path)


def _check_writable(flag: str, path: str) -> None:
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == probe:
            break
        probe = parent
    _require(os.path.isdir(probe) and os.access(probe, os.W_OK),
             f"{flag} {path}: {probe} is not a writable directory; choose a directory you can write")


def split_fractions(split: str) -> list[float]:
    """``--split "969,30,1"`` -> train/valid/test fractions; missing parts are 0, as upstream."""
    parts = split.replace("/", ",").split(",")
    try:
        numbers = [float(x) for x in parts]
    except ValueError:
        numbers = []
    _require(1 <= len(numbers) <= 3 and all(x >= 0 for x in numbers) and sum(numbers) > 0,
             f"--split {split!r}: expected up to three non-negative numbers, not all 0, such as 969,30,1")
    numbers += [0.0] * (3 - len(numbers))
    return [x / sum(numbers) for x in numbers]


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron's padding: the vocabulary rounded up to a multiple of ``divisible_by * tp``."""
    multiple = divisible_by * tp
    return int(math.ceil(vocab_size / multiple) * multiple)


def parse_data_path(tokens: list[str] | None) -> tuple[list[str], list[float] | None]:
    """``[w1, p1, w2, p2]`` or ``[p1, p2]`` -> (prefixes, weights or None); weights are sampling probabilities."""
    if not tokens:
        return [], None
    try:
        weights = [float(t) for t in tokens[0::2]]
    except ValueError:
        return list(tokens), None
    prefixes = tokens[1::2]
    _require(len(prefixes) == len(weights),
             f"--data-path {' '.join(tokens)}: expected weight prefix pairs or prefixes only")
    _require(all(w >= 0 for w in weights) and sum(weights) > 0, "--data-path weights must be >= 0 and not all 0")
    return prefixes, weights
