"""Training tokenizers: the fields megatron-core's datasets read, and files that are not what the flag says."""

import pytest

from megatron_patch.errors import ArgumentError
from megatron_patch.tokenizer import NullTokenizer, SentencePieceTokenizer, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory):
    """A small SentencePiece model trained here on a few sentences."""
    import sentencepiece

    out = tmp_path_factory.mktemp("tok")
    text = out / "text.txt"
    text.write_text("\n".join(f"sentence {i} of the tokenizer test, with words to split" for i in range(200)))
    sentencepiece.SentencePieceTrainer.train(input=str(text), model_prefix=str(out / "tok"), vocab_size=64,
                                            model_type="bpe", minloglevel=2)
    return str(out / "tok.model")


def test_sentencepiece_model_fields(tokenizer_model):
    import sentencepiece

    reference = sentencepiece.SentencePieceProcessor(model_file=tokenizer_model)
    tokenizer = build_tokenizer("SentencePieceTokenizer", tokenizer_model, None)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert (tokenizer.vocab_size, tokenizer.eod, tokenizer.pad) == (
        reference.vocab_size(), reference.eos_id(), reference.pad_id())


def test_null_tokenizer_takes_ids_as_tokens():
    tokenizer = build_tokenizer("NullTokenizer", None, 1000)
    assert isinstance(tokenizer, NullTokenizer) and (tokenizer.vocab_size, tokenizer.eod) == (1000, 999)
    with pytest.raises(ArgumentError, match="--vocab-size is not set"):
        build_tokenizer("NullTokenizer", None, None)


def test_a_file_that_is_no_sentencepiece_model_is_one_line(tmp_path):
    bogus = tmp_path / "tokenizer.json"
    bogus.write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(ArgumentError) as err:
        build_tokenizer("SentencePieceTokenizer", str(bogus), None)
    assert str(err.value).startswith(f"--tokenizer-model {bogus}: not a SentencePiece model")
    assert "\n" not in str(err.value)
    with pytest.raises(ArgumentError, match="no such file"):
        build_tokenizer("SentencePieceTokenizer", str(tmp_path / "missing.model"), None)
