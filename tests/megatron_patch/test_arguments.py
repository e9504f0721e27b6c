"""Flags: upstream Megatron-LM argument lists parse to the model upstream builds; presets; errors.

Parameter counts are checked against closed forms written out here from the shapes, independent
of :mod:`megatron_patch.estimate` (whose count is checked against real models in test_model.py).
"""

import pathlib
import re

import pytest

from megatron_patch.arguments import (
    NO_EFFECT_FLAGS,
    NO_EFFECT_VALUED_FLAGS,
    build_parser,
    no_effect_flags_given,
    padded_vocab_size,
    parse_args,
    split_fractions,
)
from megatron_patch.errors import ArgumentError
from megatron_patch.estimate import parameter_count
from tests.helpers.config import config_of

ROOT = pathlib.Path(__file__).resolve().parents[2]


def resolve(argv, family="gpt", world_size=1):
    return config_of(argv, family=family, world_size=world_size)


# Written like examples/gpt3/train_gpt3_175b_distributed.sh (GPT-3 175B), on mock data: --vocab-size
# instead of GPT-2 BPE's --vocab-file/--merge-file (which need the files).
GPT3_ARGS = """
    --num-layers 96 --hidden-size 12288 --num-attention-heads 96 --seq-length 2048
    --max-position-embeddings 2048 --attention-backend auto --use-flash-attn
    --micro-batch-size 1 --global-batch-size 1536 --train-iters 500000 --weight-decay 0.1
    --adam-beta1 0.9 --adam-beta2 0.95 --init-method-std 0.006 --clip-grad 1.0 --fp16
    --lr 6.0e-5 --lr-decay-style cosine --min-lr 6.0e-6 --lr-warmup-fraction .001 --lr-decay-iters 430000
    --tensor-model-parallel-size 8 --pipeline-model-parallel-size 16
    --mock-data --tokenizer-type NullTokenizer --vocab-size 50257 --make-vocab-size-divisible-by 128
    --split 949,50,1 --log-interval 100 --save-interval 10000 --eval-interval 1000 --eval-iters 10
""".split()

# Written like examples/llama/train_llama3_8b_h100_fp8.sh (Llama 3 8B), with RMSNorm as Llama 3 has.
LLAMA3_ARGS = """
    --use-mcore-models --num-layers 32 --hidden-size 4096 --ffn-hidden-size 14336
    --num-attention-heads 32 --group-query-attention --num-query-groups 8 --kv-channels 128
    --seq-length 8192 --max-position-embeddings 8192 --position-embedding-type rope
    --rotary-base 500000 --rotary-percent 1.0 --attention-dropout 0.0 --hidden-dropout 0.0 --swiglu
    --init-method-std 0.0134 --attention-backend fused --normalization RMSNorm --norm-epsilon 1e-5
    --untie-embeddings-and-output-weights --disable-bias-linear
    --micro-batch-size 1 --global-batch-size 128 --train-iters 1000 --lr 0.00015 --min-lr 0.00001
    --lr-decay-style cosine --clip-grad 1.0 --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95
    --bf16 --cross-entropy-loss-fusion --manual-gc --empty-unused-memory-level 1 --exit-duration-in-mins 235
    --fp8-format hybrid --fp8-amax-history-len 1024 --fp8-amax-compute-algo max --fp8-param-gather
    --tensor-model-parallel-size 2 --context-parallel-size 1 --sequence-parallel
    --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather
    --mock-data --tokenizer-type NullTokenizer --vocab-size 128256 --split 99,1,0
    --no-create-attention-mask-in-dataloader --no-mmap-bin-files --num-workers 1
    --log-interval 1 --eval-iters 32 --eval-interval 100 --ckpt-format torch_dist --distributed-timeout-minutes 60
""".split()


def gpt3_closed_form(layers, h, vocab, positions):
    """GPT-3 layout, tied: per layer 4h^2 attention + 8h^2 MLP, 9h linear biases, 2 LayerNorms (4h)."""
    return layers * (12 * h * h + 13 * h) + (vocab + positions) * h + 2 * h


def llama_closed_form(layers, h, heads, groups, head_dim, ffn, vocab):
    """Llama layout, untied, no biases: q and o (h x heads*d), k and v (h x groups*d), SwiGLU 3 h ffn."""
    attention = 2 * h * heads * head_dim + 2 * h * groups * head_dim
    return layers * (attention + 3 * h * ffn + 2 * h) + 2 * vocab * h + h


def test_gpt3_style_upstream_arguments(tmp_path):
    argv = [*GPT3_ARGS, "--save", str(tmp_path), "--load", str(tmp_path)]
    config = resolve(argv, world_size=8 * 16 * 8)
    assert (config.model.normalization, config.model.position_embedding_type, config.model.swiglu) == ("LayerNorm", "learned_absolute", False)
    assert not config.model.untie_embeddings_and_output_weights and not config.model.disable_bias_linear
    assert (config.model.hidden_dropout, config.model.attention_dropout, config.model.ffn_hidden_size) == (0.1, 0.1, 4 * 12288)
    assert config.parallel.data_parallel_size == 8 and config.training.num_microbatches == 192
    assert config.training.lr_warmup_iters == pytest.approx(430)  # 0.001 of the 430,000 decay iterations
    assert config.model.padded_vocab_size == 51200  # 50257 rounded up to a multiple of 128 x TP 8
    assert parameter_count(config.model) == gpt3_closed_form(96, 12288, 51200, 2048) == 174_615_846_912
    assert no_effect_flags_given(argv, config) == ["--use-flash-attn", "--attention-backend"]


def test_llama3_style_upstream_arguments():
    config = resolve(LLAMA3_ARGS, world_size=8)
    assert (config.model.normalization, config.model.position_embedding_type, config.model.swiglu) == ("RMSNorm", "rope", True)
    assert (config.model.num_query_groups, config.model.kv_channels, config.model.rotary_base, config.model.rotary_percent) == (8, 128, 500000, 1.0)
    assert config.parallel.sequence_parallel and config.model.cross_entropy_loss_fusion and config.parallel.data_parallel_size == 4
    assert config.model.padded_vocab_size == 128256
    # Llama 3 8B: 8,030,261,248 parameters.
    assert parameter_count(config.model) == llama_closed_form(32, 4096, 32, 8, 128, 14336, 128256) == 8_030_261_248
    assert set(no_effect_flags_given(LLAMA3_ARGS, config)) == {
        "--use-mcore-models", "--manual-gc", "--fp8-param-gather",
        "--no-create-attention-mask-in-dataloader", "--no-mmap-bin-files", "--attention-backend",
        "--empty-unused-memory-level", "--fp8-format", "--fp8-amax-history-len", "--fp8-amax-compute-algo"}
    # Communication options megatron-core DDP takes are real flags, passed through.
    assert config.parallel.overlap_grad_reduce and config.parallel.overlap_param_gather and config.parallel.distributed_timeout_minutes == 60


def test_overlap_param_gather_needs_the_distributed_optimizer():
    with pytest.raises(ArgumentError, match="--overlap-param-gather needs --use-distributed-optimizer"):
        resolve(["--model", "tiny", "--mock-data", "--train-iters", "1", "--vocab-size", "100",
                 "--overlap-param-gather"])


@pytest.mark.parametrize("flags, named", [
    (["--train-samples", "1953125000", "--lr-warmup-samples", "3906252"], ["--train-samples", "--lr-warmup-samples"]),
    (["--rampup-batch-size", "16", "16", "5859375"], ["--rampup-batch-size"]),
    (["--recompute-granularity=full"], ["--recompute-granularity"]),
    (["--finetune"], ["--finetune", "--no-load-optim"]),
    (["--not-a-megatron-flag"], ["--not-a-megatron-flag"]),
    # argparse's own complaints are one-line ArgumentErrors too, never a usage dump and exit.
    (["--lr-decay-style", "inverse-square-root"], ["--lr-decay-style"]),
    (["--num-layers", "two"], ["--num-layers"]),
])
def test_unsupported_upstream_flags_are_errors_naming_them(flags, named):
    with pytest.raises(ArgumentError) as err:
        parse_args(["--model", "tiny", *flags], family="gpt")
    message = str(err.value)
    assert "\n" not in message and all(flag in message for flag in named)


def test_every_no_effect_flag_is_accepted_and_reported():
    argv = [*NO_EFFECT_FLAGS, *(x for flag in NO_EFFECT_VALUED_FLAGS for x in (flag, "1"))]
    config = resolve(["--model", "tiny", "--mock-data", "--train-iters", "1", "--vocab-size", "100", *argv])
    assert set(no_effect_flags_given(argv, config)) == set(NO_EFFECT_FLAGS) | set(NO_EFFECT_VALUED_FLAGS)


def test_upstream_defaults_for_omitted_shape_flags():
    base = ["--num-layers", "2", "--hidden-size", "4096", "--num-attention-heads", "32", "--seq-length", "16"]
    # SwiGLU without --ffn-hidden-size: 2/3 of 4h rounded down to a multiple of 64, as upstream.
    assert parse_args([*base, "--swiglu"], family="gpt").ffn_hidden_size == 10880
    assert parse_args(base, family="gpt").ffn_hidden_size == 4 * 4096
    # --group-query-attention without --num-query-groups: one group (upstream's default).
    assert parse_args([*base, "--group-query-attention"], family="gpt").num_query_groups == 1
    assert parse_args(base, family="gpt").num_query_groups == 32
    # --sequence-parallel without TP is turned off, as upstream does, and reported.
    argv = [*base, "--sequence-parallel", "--mock-data", "--train-iters", "1"]
    config = resolve(argv)
    assert not config.parallel.sequence_parallel and no_effect_flags_given(argv, config) == ["--sequence-parallel"]


@pytest.mark.parametrize("argv, flag", [
    (["--num-query-groups", "8"], "--num-query-groups"),
    (["--context-parallel-size", "2"], "--context-parallel-size"),
    (["--lr-warmup-fraction", "0.01", "--lr-warmup-iters", "10"], "--lr-warmup-fraction"),
    (["--lr-warmup-fraction", "1.5"], "--lr-warmup-fraction"),
    (["--no-position-embedding", "--position-embedding-type", "learned_absolute"], "--no-position-embedding"),
    (["--tensor-model-parallel-size", "3"], "--tensor-model-parallel-size"),
    (["--tensor-model-parallel-size", "2", "--group-query-attention", "--num-query-groups", "1"], "--num-query-groups"),
    (["--pipeline-model-parallel-size", "3"], "--pipeline-model-parallel-size"),
    (["--global-batch-size", "6"], "--global-batch-size"),
    (["--seq-length", "512"], "--max-position-embeddings"),
    (["--bf16", "--fp16"], "--bf16"),
    (["--min-lr", "1.0"], "--min-lr"),
    (["--save-interval", "10"], "--save"),
    (["--split", "0,99,1", "--mock-data"], None),  # mock data ignores --split: fine
    (["--split", "a,b"], "--split"),
    (["--split", "1,1,1,1"], "--split"),
    (["--split", "0,0,0"], "--split"),
])
def test_bad_flags_are_one_line_errors_naming_the_flag(argv, flag):
    argv = ["--model", "gpt2-mini", "--mock-data", "--train-iters", "1", "--micro-batch-size", "2", *argv]
    if flag is None:
        resolve(argv, world_size=12)
        return
    with pytest.raises(ArgumentError) as err:
        resolve(argv, world_size=12)
    assert flag in str(err.value) and "\n" not in str(err.value)


def test_split_without_a_training_part_is_refused_for_real_data(tmp_path):
    with pytest.raises(ArgumentError, match="--split 0,99,1 gives no training part"):
        resolve(["--model", "tiny", "--dry-run", "--data-path", str(tmp_path / "x"), "--split", "0,99,1"])
    # With separate validation sets all of --data-path trains, whatever --split says.
    resolve(["--model", "tiny", "--dry-run", "--data-path", "p", "--valid-data-path", "v", "--split", "0,1,0"])


def test_split_fractions_as_megatron_core_reads_them():
    assert split_fractions("969,30,1") == pytest.approx([0.969, 0.030, 0.001])
    assert split_fractions("99, 1") == pytest.approx([0.99, 0.01, 0.0])  # missing parts are 0
    assert split_fractions("90/5/5") == pytest.approx([0.9, 0.05, 0.05])


# The paper's shapes (PAPER.md): layers, hidden, heads, ffn, vocabulary, sequence, parameters.
@pytest.mark.parametrize("preset, shape, params", [
    ("llama-1.4b", (24, 2048, 16, 5632, 32000, 4096), 1.364e9),
    ("llama-7b", (32, 4096, 32, 11008, 32000, 4096), 6.738e9),
    ("gpt2-small", (12, 768, 12, 3072, 50257, 512), 124e6),
    ("gpt2-medium", (24, 768, 16, 3072, 50257, 512), 209e6),
    ("gpt2-large", (36, 768, 24, 3072, 50257, 512), 294e6),
])
def test_presets_are_the_papers_shapes(preset, shape, params):
    config = resolve(["--model", preset, "--mock-data", "--train-iters", "1"], family="llama")
    assert (config.model.num_layers, config.model.hidden_size, config.model.num_attention_heads, config.model.ffn_hidden_size, config.model.vocab_size,
            config.model.seq_length) == shape
    assert parameter_count(config.model) == pytest.approx(params, rel=0.005)


def test_explicit_flags_override_the_preset():
    config = resolve(["--model", "llama-7b", "--num-layers", "2", "--seq-length", "128", "--mock-data",
                    "--train-iters", "1", "--rotary-base", "500000"], family="llama")
    assert (config.model.num_layers, config.model.seq_length, config.model.hidden_size, config.model.rotary_base) == (2, 128, 4096, 500000)
    config = resolve(["--model", "llama-7b", "--mock-data", "--train-iters", "1"], family="gpt")
    # The preset beats the family: pretrain_gpt.py --model llama-7b is the Llama layout.
    assert (config.model.normalization, config.model.swiglu, config.model.rotary_base, config.model.rotary_percent) == ("RMSNorm", True, 10000, 1.0)
    assert config.model.untie_embeddings_and_output_weights and config.model.disable_bias_linear and config.model.hidden_dropout == 0.0


def test_padded_vocab_size():
    assert padded_vocab_size(32000, 128, 1) == 32000
    assert padded_vocab_size(32001, 128, 2) == 32256
    assert padded_vocab_size(50257, 128, 8) == 51200


def test_every_flag_is_documented():
    documented = set(re.findall(r"--[a-z0-9][a-z0-9-]*", (ROOT / "docs" / "flags.md").read_text()))
    flags = {flag for action in build_parser("gpt")._actions for flag in action.option_strings} - {"-h", "--help"}
    assert flags - documented == set()


@pytest.mark.parametrize("argv, world_size, expected", [
    (GPT3_ARGS, 8 * 16 * 8, gpt3_closed_form(96, 12288, 51200, 2048)),
    (LLAMA3_ARGS, 8, llama_closed_form(32, 4096, 32, 8, 128, 14336, 128256)),
])
def test_upstream_argument_lists_through_the_entry_point_dry_run(argv, world_size, expected, capsys, monkeypatch,
                                                                 tmp_path):
    # What a user sees: `WORLD_SIZE=N python pretrain_gpt.py <upstream flags> --dry-run`.
    import pretrain_gpt

    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    pretrain_gpt.main([*argv, "--save", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out
    assert f"parameters: {expected:,} " in out
