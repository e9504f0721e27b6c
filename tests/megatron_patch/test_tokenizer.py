"""Tokenizers of every --tokenizer-type: the ids, EOD and vocabulary of the tokenizer's own library on real
text, the padded vocabulary of the run, and files that are not what their flag says (one line each)."""

import os

import pytest

from megatron_patch.arguments import resolve_config
from megatron_patch.errors import ArgumentError
from megatron_patch.tokenizer import TOKENIZER_TYPES, build_tokenizer, tokenizer_flags
from tests.helpers.tokenizer_files import Reference, fixture_texts, null_texts

# Text where tokenizers differ: specials written in the text, accents, emoji, indentation, digits, CRLF.
TRICKY = ["<|endoftext|> and </s> inside a document", "caf\u00e9 na\u00efve \u00fcber \u4e2d\u6587 \U0001f600",
          "def f(x):\n\treturn x  +  1\n\n\n", "  leading and trailing  ", "12345 3.14159 2026-12-01", "a\r\nb"]


@pytest.fixture
def stand_ins(tokenizer_stand_ins):
    return tokenizer_stand_ins


def texts_for(kind):
    texts = fixture_texts()[:12] + TRICKY
    return null_texts(texts) if kind == "NullTokenizer" else texts


@pytest.mark.parametrize("kind", TOKENIZER_TYPES)
def test_ids_eod_and_vocabulary_are_the_libraries(stand_ins, kind):
    settings = stand_ins[kind]
    tokenizer, reference = build_tokenizer(**settings), Reference(settings)
    assert (tokenizer.vocab_size, tokenizer.eod) == (reference.vocab_size, reference.eod)
    texts = texts_for(kind)
    expected = [list(reference.encode(t)) for t in texts]
    assert all(expected[:12]) and sum(map(len, expected)) > 1000  # real text gives real ids (DESIGN's pitfall)
    assert [tokenizer.tokenize(t) for t in texts] == expected
    assert [list(x) for x in tokenizer.tokenize_batch(texts)] == expected
    assert [list(x) for x in tokenizer.tokenize_batch(texts, threads=2)] == expected
    assert max(max(ids) for ids in expected) < tokenizer.vocab_size


@pytest.mark.parametrize("kind, pad", [("SentencePieceTokenizer", -1), ("GPT2BPETokenizer", -1),
                                       ("HuggingFaceTokenizer", -1), ("TikTokenizer", 4), ("NullTokenizer", -1)])
def test_pad_and_cache_identifiers(stand_ins, kind, pad):
    tokenizer = build_tokenizer(**stand_ins[kind])
    assert tokenizer.pad == pad and tokenizer.unique_identifiers["class"] == kind
    files = [v for k, v in stand_ins[kind].items() if k in ("tokenizer_model", "vocab_file", "merge_file")]
    # the files by absolute path (a tokenizer.json by its own path when its directory is given)
    values = [str(v) for v in tokenizer.unique_identifiers.values()]
    assert files and all(any(v.startswith(os.path.abspath(f)) for v in values) for f in files) or kind == "NullTokenizer"


def test_a_tokenizer_json_file_or_its_directory(stand_ins):
    directory = stand_ins["HuggingFaceTokenizer"]["tokenizer_model"]
    by_file = build_tokenizer("HuggingFaceTokenizer", os.path.join(directory, "tokenizer.json"))
    assert by_file.tokenize(TRICKY[1]) == build_tokenizer("HuggingFaceTokenizer", directory).tokenize(TRICKY[1])


def test_tiktoken_vocabulary_and_special_ids(stand_ins):
    path = stand_ins["TikTokenizer"]["tokenizer_model"]
    ranks = Reference(stand_ins["TikTokenizer"]).vocab_size - 1000
    small = build_tokenizer("TikTokenizer", path, 1000 + 300)  # the first 300 ranks only
    assert small.vocab_size == 1300 and max(small.tokenize(fixture_texts()[0])) < 1300
    few = build_tokenizer("TikTokenizer", path, tiktoken_num_special_tokens=16)
    assert few.vocab_size == 16 + ranks and few.eod == 2
    with pytest.raises(ArgumentError, match=f"--vocab-size {1001 + ranks}: .* use at most {1000 + ranks}"):
        build_tokenizer("TikTokenizer", path, 1001 + ranks)


@pytest.mark.parametrize("kind", TOKENIZER_TYPES)
def test_the_run_takes_the_tokenizers_vocabulary_padded_for_tp(stand_ins, kind, tmp_path):
    flags = ["--model", "tiny", "--train-iters", "1", "--mock-data", "--tensor-model-parallel-size", "2",
             *tokenizer_flags(stand_ins[kind])]
    config, tokenizer = resolve_config(flags, family="gpt", world_size=2)
    vocab = Reference(stand_ins[kind]).vocab_size
    assert config.model.vocab_size == tokenizer.vocab_size == vocab
    assert config.model.padded_vocab_size == -(-vocab // 256) * 256  # 128 x TP 2, rounded up


def _one_line_error(settings, flag):
    with pytest.raises(ArgumentError) as err:
        build_tokenizer(**settings)
    message = str(err.value)
    assert "\n" not in message and message.startswith(flag), message
    return message


def test_files_that_are_not_what_their_flag_says(stand_ins, tmp_path):
    sp, hf = stand_ins["SentencePieceTokenizer"]["tokenizer_model"], stand_ins["HuggingFaceTokenizer"]["tokenizer_model"]
    gpt2, tiktoken = stand_ins["GPT2BPETokenizer"], stand_ins["TikTokenizer"]["tokenizer_model"]
    hf_json = os.path.join(hf, "tokenizer.json")
    assert "not a SentencePiece model" in _one_line_error(
        {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": hf_json}, f"--tokenizer-model {hf_json}")
    assert "no such file" in _one_line_error(
        {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": str(tmp_path / "no.model")}, "--tokenizer-model")
    swapped = {**gpt2, "vocab_file": gpt2["merge_file"]}
    assert "not GPT-2's vocab.json" in _one_line_error(swapped, f"--vocab-file {gpt2['merge_file']}")
    assert "not GPT-2's merges.txt" in _one_line_error({**gpt2, "merge_file": gpt2["vocab_file"]}, "--merge-file")
    no_eot = tmp_path / "vocab.json"
    no_eot.write_text('{"a": 0, "b": 1}')
    assert "has no <|endoftext|> token" in _one_line_error({**gpt2, "vocab_file": str(no_eot)}, "--vocab-file")
    assert "is not set" in _one_line_error({"tokenizer_type": "GPT2BPETokenizer"}, "--vocab-file")
    assert "not a Hugging Face tokenizer.json" in _one_line_error(
        {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": tiktoken}, "--tokenizer-model")
    assert "no tokenizer.json there" in _one_line_error(
        {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(tmp_path)}, f"--tokenizer-model {tmp_path}")
    ranks_file = tmp_path / "gpt2.tiktoken"
    ranks_file.write_text("IQ== 0\nIg== 1\n")  # OpenAI's .tiktoken format: megatron-core does not read it
    message = _one_line_error({"tokenizer_type": "TikTokenizer", "tokenizer_model": str(ranks_file)},
                              f"--tokenizer-model {ranks_file}")
    assert "not megatron-core's tiktoken JSON" in message and "HuggingFaceTokenizer" in message
    assert "not megatron-core's tiktoken JSON" in _one_line_error(
        {"tokenizer_type": "TikTokenizer", "tokenizer_model": sp}, "--tokenizer-model")
    assert "--vocab-size is not set" in _one_line_error({"tokenizer_type": "NullTokenizer"}, "--vocab-size")


def test_a_tokenizer_json_without_an_end_of_document_token(tmp_path):
    from tests.helpers.tokenizer_files import train_byte_level_bpe

    bpe = train_byte_level_bpe(fixture_texts()[:3], vocab_size=300)
    bpe.add_special_tokens(["<|im_start|>"])
    spec = bpe.to_str().replace('"<|endoftext|>"', '"<|not_the_end|>"')
    (tmp_path / "tokenizer.json").write_text(spec)
    message = _one_line_error({"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(tmp_path)},
                              "--tokenizer-model")
    assert "names no end-of-document token" in message and "tokenizer_config.json" in message
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_start|>"}')
    tokenizer = build_tokenizer("HuggingFaceTokenizer", str(tmp_path))
    assert tokenizer.eod == bpe.token_to_id("<|im_start|>")
