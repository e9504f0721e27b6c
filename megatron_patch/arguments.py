"""Command-line flags with Megatron-LM's names and meanings, presets, and validation.

Values resolve in this order: an explicit flag, else the ``--model`` preset, else the family
default (llama or gpt), else the flag's default. Flags that only tune kernels on hardware we do
not have are accepted and reported once as having no effect; any other unknown flag is an error.
:func:`validate_args` derives the layout (data-parallel size, micro-batches per step, padded
vocabulary) and raises :class:`ArgumentError` with one line naming the flag and what to change.
"""

import argparse
import math
import os

from .health import add_weight_health_args
from .loss import add_reweight_args
from .presets import FAMILY_DEFAULTS, PRESETS


class ArgumentError(ValueError):
    """A bad flag value or combination; the message names the flag and what to change."""


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
    "--vocab-file": "GPT-2 BPE is not supported; pass a SentencePiece --tokenizer-model (tools/train_tokenizer.py)",
    "--merge-file": "GPT-2 BPE is not supported; pass a SentencePiece --tokenizer-model (tools/train_tokenizer.py)",
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


def _model_args(p):
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=sorted(PRESETS), help="shape preset; explicit flags override it")
    for flag in ("num-layers", "hidden-size", "num-attention-heads", "ffn-hidden-size", "seq-length",
                 "max-position-embeddings", "vocab-size", "kv-channels", "num-query-groups"):
        g.add_argument(f"--{flag}", type=int, default=None)
    g.add_argument("--group-query-attention", action="store_true",
                   help="use --num-query-groups key/value heads (default 1, as in Megatron-LM)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--normalization", choices=("LayerNorm", "RMSNorm"), default=None)
    g.add_argument("--norm-epsilon", type=float, default=None)
    g.add_argument("--swiglu", action="store_true", default=None)
    g.add_argument("--position-embedding-type", choices=("learned_absolute", "rope"), default=None)
    g.add_argument("--no-position-embedding", action="store_true",
                   help="Megatron-LM's older spelling of 'no learned positions'; valid with rope only")
    g.add_argument("--rotary-base", type=int, default=None)
    g.add_argument("--rotary-percent", type=float, default=None)
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true", default=None)
    g.add_argument("--disable-bias-linear", action="store_true", default=None)
    g.add_argument("--apply-layernorm-1p", action="store_true",
                   help="norm weights stored as (gamma - 1), initialised at 0 (needs Transformer Engine)")
    g.add_argument("--cross-entropy-loss-fusion", action="store_true",
                   help="fused cross entropy (still per token; checked at start-up)")
    g.add_argument("--cross-entropy-fusion-impl", choices=("native", "te"), default="native")
    g.add_argument("--init-method-std", type=float, default=0.02)
    g.add_argument("--transformer-impl", choices=("transformer_engine", "local"), default="transformer_engine",
                   help="layer spec: Transformer Engine's when it imports (else megatron-core's local one), or local")
    g.add_argument("--hidden-dropout", type=float, default=None)
    g.add_argument("--attention-dropout", type=float, default=None)


def _training_args(p):
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int, default=None, help="default: micro batch x DP")
    g.add_argument("--train-iters", type=int, default=None)
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=("constant", "linear", "cosine"), default="cosine")
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-warmup-fraction", type=float, default=None,
                   help="warm up over this fraction of --lr-decay-iters (instead of --lr-warmup-iters)")
    g.add_argument("--lr-decay-iters", type=int, default=None, help="default: --train-iters")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.95)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--optimizer", choices=("adam",), default="adam", help="Adam with decoupled weight decay")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--calculate-per-token-loss", action="store_true")
    g.add_argument("--exit-interval", type=int, default=None)
    g.add_argument("--exit-duration-in-mins", type=float, default=None)
    g.add_argument("--exit-signal-handler", action="store_true")


def _parallel_args(p):
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    # megatron-core DDP's communication options, as upstream names them.
    g.add_argument("--overlap-grad-reduce", action="store_true",
                   help="reduce gradient buckets while the backward pass runs")
    g.add_argument("--overlap-param-gather", action="store_true",
                   help="gather updated parameters during the next forward pass (needs --use-distributed-optimizer)")
    g.add_argument("--ddp-bucket-size", type=int, default=None,
                   help="parameters per gradient bucket with --overlap-grad-reduce (megatron-core's default if unset)")
    g.add_argument("--distributed-timeout-minutes", type=float, default=10,
                   help="timeout of collectives before a hung rank fails the job")


def _data_args(p):
    g = p.add_argument_group("data")
    g.add_argument("--data-path", "--train-data-path", dest="data_path", nargs="*", default=None,
                   help="[weight] prefix [weight prefix ...]; weights are sampling probabilities. Split by "
                        "--split unless --valid-data-path is given (then all of it trains)")
    g.add_argument("--valid-data-path", nargs="*", default=None,
                   help="validation prefixes, one set per domain, independent of the training weights")
    g.add_argument("--split", default="969,30,1")
    g.add_argument("--mock-data", action="store_true")
    g.add_argument("--tokenizer-type", default="SentencePieceTokenizer",
                   choices=("SentencePieceTokenizer", "NullTokenizer"))
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--num-workers", type=int, default=0)


def _io_args(p):
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--ckpt-format", choices=("torch_dist",), default="torch_dist",
                   help="megatron-core dist_checkpointing, the only format here")
    g.add_argument("--override-data-blend", action="store_true",
                   help="allow --load with a data blend that differs from the checkpoint's")
    g.add_argument("--eval-interval", type=int, default=1000)
    g.add_argument("--eval-iters", type=int, default=10)
    g.add_argument("--log-interval", type=int, default=100)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--wandb-project", default=None)
    g.add_argument("--wandb-exp-name", default=None)
    g.add_argument("--metrics-file", default=None, help="JSON lines of the logged metrics (docs/architecture.md)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the resolved arguments, parameter count, tokens per step and memory per GPU, then exit")


def build_parser(family: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"pretrain_{family}.py", allow_abbrev=False,
        description="megatron-core pretraining with online loss-based sample reweighting",
    )
    for add in (_model_args, _training_args, _parallel_args, _data_args, _io_args):
        add(p)
    add_reweight_args(p)
    add_weight_health_args(p)
    g = p.add_argument_group("accepted for Megatron-LM compatibility, no effect here")
    for flag in NO_EFFECT_FLAGS:
        g.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in NO_EFFECT_VALUED_FLAGS:
        g.add_argument(flag, default=None, help=argparse.SUPPRESS)
    return p


def no_effect_flags_given(args) -> list[str]:
    """The accepted-but-inert flags the user passed (to log once), incl. ``--sequence-parallel`` without TP."""
    given = list(getattr(args, "ignored_flags", []))
    given += [f for f in NO_EFFECT_FLAGS if getattr(args, f[2:].replace("-", "_"))]
    given += [f for f in NO_EFFECT_VALUED_FLAGS if getattr(args, f[2:].replace("-", "_")) is not None]
    return given


def parse_args(argv=None, *, family: str = "llama") -> argparse.Namespace:
    """Parse ``argv`` and resolve presets and family defaults (no validation of the layout)."""
    if family not in FAMILY_DEFAULTS:
        raise ArgumentError(f"unknown model family {family!r}; use llama or gpt")
    parser = build_parser(family)
    args, unknown = parser.parse_known_args(argv)
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


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ArgumentError(message)


def validate_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """Check the flags against each other and the world size; derive the layout fields.

    Sets ``data_parallel_size``, ``num_microbatches``, ``padded_vocab_size`` (when the vocabulary
    is known), ``lr_decay_iters``. Raises :class:`ArgumentError`.
    """
    for name in ("num_layers", "hidden_size", "num_attention_heads", "seq_length"):
        _require(getattr(args, name) is not None,
                 f"--{name.replace('_', '-')} is not set; pass it or choose a --model preset ({', '.join(sorted(PRESETS))})")
    tp, pp, cp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.context_parallel_size
    _require(min(tp, pp, cp) >= 1, "--tensor/--pipeline-model-parallel-size and --context-parallel-size must be >= 1")
    # The forward step gives every rank whole sequences; context parallelism would need each CP
    # rank to get its slice of the sequence, so CP > 1 would silently train a different model.
    _require(cp == 1, f"--context-parallel-size {cp} is not supported (sequences are not split over ranks); "
                      "use --context-parallel-size 1 and TP/PP for memory")
    if args.sequence_parallel and tp == 1:
        # As Megatron-LM does: sequence parallelism splits TP regions, so without TP it is off.
        args.sequence_parallel = False
        args.ignored_flags = [*getattr(args, "ignored_flags", []), "--sequence-parallel"]
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
    _require(args.micro_batch_size >= 1, "--micro-batch-size must be >= 1")
    _require(not args.overlap_param_gather or args.use_distributed_optimizer,
             "--overlap-param-gather needs --use-distributed-optimizer; add it or drop --overlap-param-gather")
    _require(args.ddp_bucket_size is None or args.ddp_bucket_size >= 1, "--ddp-bucket-size must be >= 1")
    _require(args.distributed_timeout_minutes > 0, "--distributed-timeout-minutes must be > 0")
    dp = world_size // (tp * pp * cp)
    args.data_parallel_size = dp
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    _require(args.global_batch_size % (args.micro_batch_size * dp) == 0,
             f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
             f"{args.micro_batch_size} x data-parallel size {dp}; use a multiple of {args.micro_batch_size * dp}")
    args.num_microbatches = args.global_batch_size // (args.micro_batch_size * dp)
    _require(args.train_iters is not None and args.train_iters > 0 or args.dry_run,
             "--train-iters is not set; pass the number of optimizer steps")
    args.lr_decay_iters = args.lr_decay_iters or args.train_iters
    _require(args.lr_warmup_iters >= 0, "--lr-warmup-iters must be >= 0")
    if args.lr_warmup_fraction is not None:
        _require(0 <= args.lr_warmup_fraction < 1, f"--lr-warmup-fraction {args.lr_warmup_fraction} must be in [0, 1)")
        # Upstream's meaning, exactly: a fraction of the decay steps (it may end mid-iteration).
        if args.lr_decay_iters is not None:
            args.lr_warmup_iters = args.lr_warmup_fraction * args.lr_decay_iters
    _require(args.min_lr <= args.lr, f"--min-lr {args.min_lr} is above --lr {args.lr}")
    split = split_fractions(args.split)
    # The training part of each prefix comes from --split unless --valid-data-path supplies the
    # validation sets; an empty training part would leave megatron-core's sampler looping forever.
    _require(split[0] > 0 or args.mock_data or args.valid_data_path,
             f"--split {args.split} gives no training part; put a positive first number (e.g. 969,30,1)")
    for flag in ("log_interval", "eval_interval"):
        _require(getattr(args, flag) >= 1, f"--{flag.replace('_', '-')} must be >= 1")
    if args.save_interval is not None:
        _require(args.save_interval >= 1, "--save-interval must be >= 1")
        _require(args.save is not None, "--save-interval needs --save DIR")
    if not args.dry_run and not args.mock_data:
        _require(bool(args.data_path), "--data-path is not set; pass [weight] prefix ... or --mock-data")
        _require(args.tokenizer_model is not None or args.tokenizer_type == "NullTokenizer",
                 "--tokenizer-model is not set; pass a SentencePiece .model file")
    if args.tokenizer_model is not None:
        _require(os.path.isfile(args.tokenizer_model),
                 f"--tokenizer-model {args.tokenizer_model}: no such file")
    if args.save is not None:
        _check_writable(args.save)
    if args.vocab_size is not None:
        args.padded_vocab_size = padded_vocab_size(args.vocab_size, args.make_vocab_size_divisible_by, tp)
    return args


def _check_writable(path: str) -> None:
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == probe:
            break
        probe = parent
    _require(os.path.isdir(probe) and os.access(probe, os.W_OK),
             f"--save {path}: {probe} is not a writable directory; choose a directory you can write")


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
