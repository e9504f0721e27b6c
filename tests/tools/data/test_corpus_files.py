"""tools/data/corpus_files.py: files, globs and directories in order; every format streams the same records;
a file that is not what its name says is one error line."""

import gzip
import json
import re

import pytest

from megatron_patch.errors import ArgumentError
from tests.tools.helpers import write_corpus
from tools.data.corpus_files import expand_inputs, iter_texts, read_tasks
from tools.data.jsonl_documents import BadLineError, BadLineReport

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)

RECORDS = [{"text": f"document {i} " + "word " * (i % 7), "meta": {"redpajama_set_name": "RedPajamaC4"}}
           for i in range(50)]


def _records(tasks):
    items = [(t.path, t.first + i, item) for t in tasks for i, item in enumerate(t.items)]
    return [(path, n, json.loads(item) if isinstance(item, bytes) else item) for path, n, item in items]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_every_format_streams_the_records_in_order(tmp_path, suffix, monkeypatch):
    monkeypatch.setattr("tools.data.corpus_files.ROWS_PER_BATCH", 8)
    path = write_corpus(tmp_path / f"c{suffix}", RECORDS)
    tasks = list(read_tasks([path], ("text", "meta"), bytes_per_task=300))
    assert len(tasks) > 3  # chunked, not read whole
    assert _records(tasks) == [(path, i + 1, r) for i, r in enumerate(RECORDS)]
    assert tasks[-1].done_bytes == (tmp_path / f"c{suffix}").stat().st_size
    assert all(a.done_bytes <= b.done_bytes for a, b in zip(tasks, tasks[1:]))


def test_several_files_globs_and_directories_in_order(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    files = [write_corpus(tmp_path / "d" / "sub" / "b.jsonl.zst", RECORDS[:2]),
             write_corpus(tmp_path / "d" / "a.jsonl", RECORDS[2:4]), write_corpus(tmp_path / "z.parquet", RECORDS[4:6])]
    (tmp_path / "d" / "notes.txt").write_text("not a corpus file")  # ignored inside a directory
    assert expand_inputs([str(tmp_path / "z.parquet"), str(tmp_path / "d")]) == [files[2], files[1], files[0]]
    assert expand_inputs([str(tmp_path / "d" / "**" / "*.jsonl*")]) == [files[1], files[0]]
    tasks = list(read_tasks(expand_inputs([str(tmp_path / "d"), files[2]]), ("text", "meta"), 1 << 20))
    assert [r for _, _, r in _records(tasks)] == RECORDS[2:4] + RECORDS[:2] + RECORDS[4:6]


@pytest.mark.parametrize("pattern, expected", [
    ("missing.jsonl", "--input {d}/missing.jsonl: no such file or directory"),
    ("*.zst", "--input {d}/*.zst: matches no file; pass .jsonl, .jsonl.gz, .jsonl.zst, .parquet files"),
    ("notes.txt", "--input {d}/notes.txt: unknown format"),
    ("empty", "--input {d}/empty: holds no file"),
])
def test_inputs_that_name_no_corpus_file(tmp_path, pattern, expected):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArgumentError, match="^" + re.escape(expected.format(d=tmp_path))):
        expand_inputs([str(tmp_path / pattern)])
    one = write_corpus(tmp_path / "a.jsonl", RECORDS[:1])
    with pytest.raises(ArgumentError, match="is given twice"):
        expand_inputs([one, str(tmp_path / "*.jsonl")])


@pytest.mark.parametrize("suffix, content", [(".jsonl.gz", b"plain text, not gzip\n"),
                                             (".jsonl.zst", b"plain text, not zstd\n"),
                                             (".parquet", b"not parquet at all")])
def test_a_file_of_another_format_is_one_line(tmp_path, suffix, content):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(ArgumentError) as err:
        list(read_tasks([str(path)], ("text",), 1 << 20))
    assert str(err.value).startswith(f"--input {path}: cannot be read as {suffix} (") and "\n" not in str(err.value)


def test_a_truncated_gzip_file_is_one_line(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in RECORDS))[:-30])
    with pytest.raises(ArgumentError, match="cannot be read as .jsonl.gz"):
        list(read_tasks([str(path)], ("text",), 1 << 20))


def test_a_parquet_file_without_the_column(tmp_path):
    path = write_corpus(tmp_path / "c.parquet", [{"body": "x"}])
    with pytest.raises(ArgumentError, match=r"has no column text \(its columns: body\); name the text column"):
        list(read_tasks([path], ("text",), 1 << 20))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_iter_texts_parses_every_format_in_this_process(tmp_path, suffix):
    """The in-process reader (tools/train_tokenizer.py's): each good line's texts with its place; a bad
    line stops it naming file:line, or is skipped into the report."""
    records = [{"text": "a", "n": 1}, {"text": None, "n": 2}, {"text": "c", "n": 3}]  # a null, as Parquet has
    path = write_corpus(tmp_path / f"c{suffix}", records)
    with pytest.raises(BadLineError, match=re.escape(f"{path}:2: bad line (value is not a string ('text'))")):
        list(iter_texts([path], ("text",), BadLineReport(path)))
    report = BadLineReport(path)
    assert list(iter_texts([path], ("text",), report, "skip", bytes_per_task=8)) == [
        (path, 1, {"text": "a"}), (path, 3, {"text": "c"})]
    assert report.examples == [(f"{path}:2", "value is not a string ('text')")]
