"""tools/train_tokenizer.py: deterministic vocabulary, the documented options, every input format
preprocess_data.py reads (through the same reader), atomic output, errors as one line."""

import os

import pytest
import sentencepiece as spm

from megatron_patch.errors import ArgumentError
from tests.tools.helpers import fixture_texts, write_corpus
from tools.data.jsonl_documents import BadLineError
from tools.train_tokenizer import main, train_tokenizer, training_lines

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


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
    with pytest.raises(ArgumentError, match="^--vocab-size 200000: SentencePiece training failed") as err:
        train_tokenizer([documents_jsonl], str(tmp_path / "big.model"), vocab_size=200_000, num_threads=1)
    assert "change --vocab-size" in str(err.value) and "\n" not in str(err.value)
    assert not os.listdir(tmp_path)


def test_output_name_must_end_in_model(tmp_path, documents_jsonl):
    with pytest.raises(ArgumentError, match="--output-model"):
        train_tokenizer([documents_jsonl], str(tmp_path / "tok.bin"), vocab_size=512)


# ---------------------------------------------------------------- the inputs preprocess_data.py reads


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_every_format_trains_the_pieces_of_the_jsonl(tmp_path, suffix, tokenizer_model):
    """The fixture documents as .jsonl.gz, .jsonl.zst or Parquet give the .jsonl's model piece for piece."""
    path = write_corpus(tmp_path / f"docs{suffix}", [{"text": t, "id": i} for i, t in enumerate(fixture_texts())])
    out = str(tmp_path / "tok.model")
    main(["--input", path, "--output-model", out, "--vocab-size", "512", "--num-threads", "1"])
    assert pieces(out) == pieces(tokenizer_model)


def test_several_files_globs_and_directories_in_order(tmp_path, tokenizer_model):
    """The documents split over a directory's .jsonl.zst and .parquet (read in path order), or over a
    glob, train the model of the one .jsonl holding them in that order; other files are not read."""
    records = [{"text": t} for t in fixture_texts()]
    half, shards = len(records) // 2, tmp_path / "shards"
    shards.mkdir()
    write_corpus(shards / "a.jsonl.zst", records[:half])
    write_corpus(shards / "b.parquet", records[half:])
    (shards / "README.txt").write_text("not a corpus file")
    for inputs in ([str(shards)], [str(shards / "a.*"), str(shards / "*.parquet")]):
        out = str(tmp_path / "tok.model")
        train_tokenizer(inputs, out, vocab_size=512, num_threads=1)
        assert pieces(out) == pieces(tokenizer_model), inputs


def test_at_most_max_bytes_from_each_file(tmp_path):
    texts = [f"line {i} of file a" for i in range(100)]
    first = write_corpus(tmp_path / "a.jsonl", [{"text": "\n".join(texts)}, {"text": "never read"}])
    second = write_corpus(tmp_path / "b.parquet", [{"text": "from b"}])
    lines = list(training_lines([first, second], ("text",), max_bytes_per_input=30, on_bad_line="fail"))
    assert lines == texts[:2] + ["from b"]  # the cap reached within a's first document, then b


def test_a_bad_line_is_one_error_line_naming_file_and_line(tmp_path, capsys, tokenizer_model):
    records = [{"text": t} for t in fixture_texts()]
    path = write_corpus(tmp_path / "docs.jsonl.zst", records[:3] + [{"body": "x"}] + records[3:])
    out, flags = str(tmp_path / "tok.model"), ["--vocab-size", "512", "--num-threads", "1"]
    with pytest.raises(SystemExit) as exit_:
        main(["--input", path, "--output-model", out, *flags])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and not os.path.exists(out)
    assert err == (f"error: {path}:4: bad line (missing key 'text'); fix the file, or pass --on-bad-line skip "
                   "to skip bad lines and report them")
    with pytest.raises(BadLineError):  # the library raises it as it is, not as SentencePiece's RuntimeError
        train_tokenizer([path], out, vocab_size=512, num_threads=1)
    main(["--input", path, "--output-model", out, *flags, "--on-bad-line", "skip"])
    assert f"skipped 1 bad lines (1 missing key 'text'); lines: {path}:4" in capsys.readouterr().err
    assert pieces(out) == pieces(tokenizer_model)


@pytest.mark.parametrize("make, expected", [
    (lambda d: str(d / "missing.jsonl"), "error: --input {d}/missing.jsonl: no such file or directory"),
    (lambda d: write_corpus(d / "c.parquet", [{"body": "x"}]), "error: --input {d}/c.parquet: has no column text"),
    (lambda d: (d / "x.jsonl.zst").write_bytes(b"not zstd") and str(d / "x.jsonl.zst"),
     "error: --input {d}/x.jsonl.zst: cannot be read as .jsonl.zst ("),
])
def test_an_input_that_is_not_what_its_name_says_is_one_error_line(tmp_path, capsys, make, expected):
    with pytest.raises(SystemExit) as exit_:
        main(["--input", make(tmp_path), "--output-model", str(tmp_path / "tok.model"), "--vocab-size", "100"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(expected.format(d=tmp_path)) and err.count("\n") == 1, err
