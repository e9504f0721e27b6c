"""tools/preprocess_data.py: exact round trip through megatron-core readers for every tokenizer type and input
format, workers, bad lines, atomicity, and the command as users type it (a file path from any directory, or
``-m`` from the repository)."""

import json
import os

import numpy as np
import pytest
import sentencepiece as spm
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron.core.tokenizers import MegatronTokenizer

from megatron_patch.launch import ROOT
from megatron_patch.tokenizer import TOKENIZER_TYPES, tokenizer_flags
from tests.helpers.tokenizer_files import Reference, null_texts
from tests.tools.helpers import TOOLS, fixture_texts, run_python, write_corpus, write_jsonl
from tools.data.jsonl_documents import BadLineError
from tools.preprocess_data import main, preprocess, preprocess_jsonl


def expected_documents(tokenizer_model, texts, append_eod=True):
    """Token ids computed directly with sentencepiece, independently of the tool."""
    processor = spm.SentencePieceProcessor(model_file=tokenizer_model)
    return [processor.encode(t) + ([processor.eos_id()] if append_eod else []) for t in texts if t]


def test_indexed_dataset_round_trip(tmp_path, documents_jsonl, tokenizer_model):
    main(["--input", documents_jsonl, "--output-prefix", str(tmp_path / "out"),
          "--tokenizer-model", tokenizer_model, "--append-eod"])
    dataset = IndexedDataset(str(tmp_path / "out_text_document"))
    expected = expected_documents(tokenizer_model, fixture_texts())
    assert len(dataset) == len(expected)
    assert dataset.index.dtype == np.uint16  # 512 pieces fit in uint16
    for i, ids in enumerate(expected):
        assert dataset[i].tolist() == ids
    assert dataset.document_indices.tolist() == list(range(len(expected) + 1))


@pytest.mark.parametrize("how", ["file path, from another directory", "-m, from the repository root"])
def test_the_command_writes_the_dataset(tmp_path, documents_jsonl, tokenizer_model, how):
    prefix = tmp_path / "out" / "cli"
    flags = ["--input", documents_jsonl, "--output-prefix", str(prefix), "--tokenizer-model", tokenizer_model,
             "--append-eod", "--workers", "2"]
    if how.startswith("file"):
        work = tmp_path / "elsewhere"
        work.mkdir()
        proc = run_python([os.path.join(TOOLS, "preprocess_data.py"), *flags], cwd=work)
    else:
        proc = run_python(["-m", "tools.preprocess_data", *flags], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = expected_documents(tokenizer_model, fixture_texts())
    dataset = IndexedDataset(str(tmp_path / "out" / "cli_text_document"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == expected
    tokens = sum(map(len, expected))
    assert f"cli_text_document.bin/.idx: {len(expected)} documents, {tokens} tokens (uint16)" in proc.stderr


def test_without_eod_and_several_keys(tmp_path, tokenizer_model):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "To be, or not to be", "title": "Hamlet"},
                                               {"text": "", "title": "Empty text"}])
    result = preprocess_jsonl(path, str(tmp_path / "o"), tokenizer_model, json_keys=("text", "title"))
    assert result.documents == {"text": 1, "title": 2} and result.empty_documents == {"text": 1, "title": 0}
    titles = IndexedDataset(str(tmp_path / "o_title_document"))
    assert [titles[i].tolist() for i in range(2)] == expected_documents(tokenizer_model, ["Hamlet", "Empty text"], False)
    texts = IndexedDataset(str(tmp_path / "o_text_document"))  # keep it: its arrays view its mmap
    assert [texts[0].tolist()] == expected_documents(tokenizer_model, ["To be, or not to be"], False)


def test_gpt_dataset_samples_are_slices_of_the_documents(tmp_path, documents_jsonl, tokenizer_model):
    result = preprocess_jsonl(documents_jsonl, str(tmp_path / "out"), tokenizer_model, append_eod=True)
    stream_by_doc = expected_documents(tokenizer_model, fixture_texts())
    seq_length = 64
    num_samples = (sum(map(len, stream_by_doc)) - 1) // seq_length  # exactly one epoch
    tokenizer = MegatronTokenizer.from_pretrained(
        tokenizer_path=tokenizer_model, metadata_path={"library": "sentencepiece"})
    config = GPTDatasetConfig(
        random_seed=7, sequence_length=seq_length, blend=([result.prefixes["text"]], None), split="1,0,0",
        tokenizer=tokenizer, reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        path_to_cache=str(tmp_path / "cache"))
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, None, None], lambda: True, config).build()
    assert len(train) == num_samples
    stream = np.concatenate([stream_by_doc[d] for d in train.document_index])
    for j in range(num_samples):
        k = train.shuffle_index[j]
        window = stream[k * seq_length: k * seq_length + seq_length + 1]
        sample = train[j]
        assert sample["tokens"].tolist() == window[:-1].tolist()
        assert sample["labels"].tolist() == window[1:].tolist()


def test_several_workers_write_the_same_bytes(tmp_path, documents_jsonl, tokenizer_model, monkeypatch):
    monkeypatch.setattr("tools.data.encode_corpus.BYTES_PER_TASK", 4096)  # many tasks even for small input
    for workers in (1, 3):
        preprocess_jsonl(documents_jsonl, str(tmp_path / f"w{workers}"), tokenizer_model,
                         append_eod=True, workers=workers)
    for ext in (".bin", ".idx"):
        one = (tmp_path / f"w1_text_document{ext}").read_bytes()
        assert one == (tmp_path / f"w3_text_document{ext}").read_bytes()


def bad_input(tmp_path):
    lines = [json.dumps({"text": "good one"}).encode(), b"{not json", json.dumps({"body": "x"}).encode(),
             b"", json.dumps({"text": "caf\u00e9"}).encode("latin-1").replace(b"\\u00e9", b"\xe9"),
             json.dumps({"text": 5}).encode(), b"[1, 2]", json.dumps({"text": "good two"}).encode()]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_bad_lines_are_skipped_counted_and_reported(tmp_path, tokenizer_model, capsys):
    main(["--input", bad_input(tmp_path), "--output-prefix", str(tmp_path / "o"), "--tokenizer-model",
          tokenizer_model, "--on-bad-line", "skip", "--workers", "2"])
    dataset = IndexedDataset(str(tmp_path / "o_text_document"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == expected_documents(
        tokenizer_model, ["good one", "good two"], append_eod=False)
    report = capsys.readouterr().err
    assert "skipped 5 bad lines" in report
    for line, reason in [(2, "not JSON"), (3, "missing key 'text'"), (5, "not UTF-8"),
                         (6, "value is not a string"), (7, "not a JSON object")]:
        assert f"{line} ({reason}" in report


def test_bad_line_fails_by_default_and_leaves_no_output(tmp_path, tokenizer_model):
    with pytest.raises(BadLineError, match=r"bad\.jsonl:2: bad line \(not JSON\).*--on-bad-line skip"):
        preprocess_jsonl(bad_input(tmp_path), str(tmp_path / "o"), tokenizer_model)
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_a_crash_mid_write_leaves_nothing_under_the_final_names(tmp_path, documents_jsonl, tokenizer_model,
                                                                monkeypatch):
    prefix = str(tmp_path / "o")
    preprocess_jsonl(documents_jsonl, prefix, tokenizer_model)  # an older complete dataset
    calls = []

    def crash_after_two_documents(self, tensor, lengths, modes=None):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt("simulated crash")
        return original(self, tensor, lengths, modes)

    original = IndexedDatasetBuilder.add_document
    monkeypatch.setattr(IndexedDatasetBuilder, "add_document", crash_after_two_documents)
    old = (tmp_path / "o_text_document.bin").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        preprocess_jsonl(documents_jsonl, prefix, tokenizer_model, append_eod=True)
    assert sorted(os.listdir(tmp_path)) == ["o_text_document.bin", "o_text_document.idx"]
    assert (tmp_path / "o_text_document.bin").read_bytes() == old  # the old dataset is untouched


def read_back(prefix):
    dataset = IndexedDataset(prefix)
    return [dataset[i].tolist() for i in range(len(dataset))], dataset.index.dtype


@pytest.mark.parametrize("kind", TOKENIZER_TYPES)
def test_every_tokenizer_type_round_trips(tmp_path, tokenizer_stand_ins, kind, capsys):
    settings = tokenizer_stand_ins[kind]
    texts = fixture_texts() + ["<|endoftext|> and </s> in the text", "caf\u00e9 \U0001f600"]
    texts = null_texts(texts) if kind == "NullTokenizer" else texts
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    main(["--input", path, "--output-prefix", str(tmp_path / "o"), *tokenizer_flags(settings), "--append-eod",
          "--workers", "2"])
    reference = Reference(settings)
    documents, dtype = read_back(str(tmp_path / "o_text_document"))
    assert documents == [list(reference.encode(t)) + [reference.eod] for t in texts]  # one per line, in order
    assert dtype == np.uint16 and sum(map(len, documents)) > 10_000
    summary = capsys.readouterr().err
    padded = -(-reference.vocab_size // 128) * 128
    assert (f"tokenizer {kind}: vocabulary {reference.vocab_size} (model rows {padded} with "
            f"--make-vocab-size-divisible-by 128 at TP 1), EOD id {reference.eod}") in summary


def test_every_input_format_and_several_files_give_the_same_dataset(tmp_path, tokenizer_model):
    records = [{"text": t, "id": i} for i, t in enumerate(fixture_texts())]
    half = len(records) // 2
    settings = {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": tokenizer_model}
    outputs = {}
    for suffix in (".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet"):
        write_corpus(tmp_path / f"all{suffix}", records)
        preprocess([str(tmp_path / f"all{suffix}")], str(tmp_path / suffix[1:]), settings, append_eod=True,
                   workers=2)
        outputs[suffix] = [(tmp_path / f"{suffix[1:]}_text_document{ext}").read_bytes() for ext in (".bin", ".idx")]
    (tmp_path / "parts").mkdir()
    write_corpus(tmp_path / "parts" / "1.jsonl.zst", records[:half])
    write_corpus(tmp_path / "parts" / "2.parquet", records[half:])
    preprocess([str(tmp_path / "parts")], str(tmp_path / "parts_out"), settings, append_eod=True, workers=2)
    outputs["directory"] = [(tmp_path / f"parts_out_text_document{ext}").read_bytes() for ext in (".bin", ".idx")]
    assert all(value == outputs[".jsonl"] for value in outputs.values())
    documents, _ = read_back(str(tmp_path / "jsonl_text_document"))
    assert documents == expected_documents(tokenizer_model, fixture_texts())


def test_a_bad_line_is_one_error_line_naming_file_line_and_the_flag(tmp_path, tokenizer_model, capsys):
    path = bad_input(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--input", path, "--output-prefix", str(tmp_path / "o"), "--tokenizer-model", tokenizer_model])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines() == [
        f"error: {path}:2: bad line (not JSON); fix the file, or pass --on-bad-line skip to skip bad lines and "
        "report them"]
    rows = write_corpus(tmp_path / "rows.parquet", [{"text": "fine"}, {"text": None}, {"text": "fine too"}])
    with pytest.raises(SystemExit):
        main(["--input", rows, "--output-prefix", str(tmp_path / "p"), "--tokenizer-model", tokenizer_model])
    assert f"error: {rows}:2: bad line (value is not a string ('text'))" in capsys.readouterr().err


def test_text_the_tokenizer_refuses_is_a_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [{"text": "1 2 3"}, {"text": "1 two 3"}, {"text": "7 999"}])
    settings = {"tokenizer_type": "NullTokenizer", "vocab_size": 100}
    with pytest.raises(BadLineError, match=r"ids\.jsonl:2: bad line \(cannot be tokenized \(ValueError"):
        preprocess([path], str(tmp_path / "o"), settings)
    result = preprocess([path], str(tmp_path / "o"), settings, on_bad_line="skip")
    assert result.documents == {"text": 1} and result.bad_lines.total == 2  # 999 is not below --vocab-size 100


def test_a_wrong_tokenizer_file_is_one_error_line(tmp_path, documents_jsonl, capsys):
    with pytest.raises(SystemExit):
        main(["--input", documents_jsonl, "--output-prefix", str(tmp_path / "o"), "--tokenizer-type",
              "GPT2BPETokenizer", "--vocab-file", documents_jsonl, "--merge-file", documents_jsonl])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --vocab-file {documents_jsonl}: not GPT-2's vocab.json")
    assert os.listdir(tmp_path) == []
