"""tools/hf_tokenizer.py: each kind of training tokenizer written as Hugging Face files gives the ids of the
tokenizer's own library (tests/helpers/tokenizer_files.py's stand-ins and references) under transformers."""

import pytest
from transformers import AutoTokenizer

from tests.helpers.tokenizer_files import Reference, fixture_texts, write_tokenizer_files
from tools.hf_tokenizer import export_tokenizer

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)

TEXTS = [t[:5000] for t in fixture_texts()] + ["  two leading spaces", "digits 1234567", "tab\tand\n\nnewlines",
                                              "unicode: ü ß ∑ 🙂 龘", ""]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    return write_tokenizer_files(str(tmp_path_factory.mktemp("tokenizers")))


@pytest.mark.parametrize("kind", ["SentencePieceTokenizer", "GPT2BPETokenizer", "HuggingFaceTokenizer"])
def test_written_tokenizers_give_the_training_ids(stand_ins, tmp_path, kind):
    exported, note = export_tokenizer(stand_ins[kind], str(tmp_path))
    assert exported.kind == note == kind
    reference, theirs = Reference(stand_ins[kind]), AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert theirs(text)["input_ids"] == reference.encode(text), (kind, text[:60])
    assert exported.special_ids["eos_token_id"] in (reference.eod, None)


@pytest.mark.parametrize("kind", ["TikTokenizer", "NullTokenizer"])
def test_kinds_without_a_writer_write_nothing_and_say_so(stand_ins, tmp_path, kind):
    exported, note = export_tokenizer(stand_ins.get(kind, {"tokenizer_type": kind}), str(tmp_path))
    assert exported is None and kind in note and not list(tmp_path.iterdir())


def test_a_missing_file_is_a_note_not_a_failure(tmp_path):
    exported, note = export_tokenizer({"tokenizer_type": "SentencePieceTokenizer",
                                       "tokenizer_model": str(tmp_path / "gone.model")}, str(tmp_path))
    assert exported is None and "gone.model is not there" in note


def test_a_tokenizer_that_splits_otherwise_is_not_written(stand_ins, tmp_path, monkeypatch):
    import sentencepiece

    from tools import hf_tokenizer

    settings = stand_ins["SentencePieceTokenizer"]  # trained with SentencePiece's defaults: NFKC, collapsed spaces
    proto = sentencepiece.SentencePieceProcessor(model_file=settings["tokenizer_model"]).serialized_model_proto()
    spec = hf_tokenizer.normalizer_spec(proto)
    assert spec["charsmap"] and spec["collapse_spaces"] and spec["dummy_prefix"]
    monkeypatch.setattr(hf_tokenizer, "normalizer_spec", lambda _: dict(spec, charsmap=b"", collapse_spaces=False))
    exported, note = export_tokenizer(settings, str(tmp_path))
    assert exported is None and "no exact Hugging Face counterpart" in note and not list(tmp_path.iterdir())
