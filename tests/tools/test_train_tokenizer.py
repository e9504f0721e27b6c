"""tools/train_tokenizer.py: deterministic vocabulary, the documented options, atomic output, errors."""

import os

import pytest
import sentencepiece as spm

from tools.train_tokenizer import main, train_tokenizer


def pieces(model_path):
    processor = spm.SentencePieceProcessor(model_file=model_path)
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]


def test_same_inputs_give_the_same_pieces(tmp_path, documents_jsonl, tokenizer_model):
    other = str(tmp_path / "again.model")
    main(["--input", documents_jsonl, "--output-model", other, "--vocab-size", "512", "--num-threads", "1"])
    assert pieces(other) == pieces(tokenizer_model)
    assert len(pieces(other)) == 512


def test_special_ids_byte_fallback_and_exact_round_trip(tokenizer_model):
    processor = spm.SentencePieceProcessor(model_file=tokenizer_model)
    assert (processor.unk_id(), processor.bos_id(), processor.eos_id(), processor.pad_id()) == (0, 1, 2, -1)
    text = "def f(x):\n    return  x ** 2  # 12345 \u00e9\u4e2d\u6587 \U0001F600\n"
    ids = processor.encode(text)
    assert processor.unk_id() not in ids  # byte fallback: unseen characters become bytes
    assert processor.decode(ids) == text  # identity normalisation keeps every space and newline
    digits = [p for p in processor.encode("12345", out_type=str) if p.strip("\u2581")]
    assert digits == list("12345")  # split_digits


def test_vocab_too_large_names_the_flag(tmp_path, documents_jsonl):
    with pytest.raises(RuntimeError, match="--vocab-size"):
        train_tokenizer([documents_jsonl], str(tmp_path / "big.model"), vocab_size=200_000, num_threads=1)
    assert not os.listdir(tmp_path)


def test_output_name_must_end_in_model(tmp_path, documents_jsonl):
    with pytest.raises(ValueError, match="--output-model"):
        train_tokenizer([documents_jsonl], str(tmp_path / "tok.bin"), vocab_size=512)
