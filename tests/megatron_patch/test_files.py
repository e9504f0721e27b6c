"""megatron_patch.files: nothing partial under a final name, at any point of the commit."""

import json
import os

import pytest

from megatron_patch import files
from megatron_patch.files import atomic_outputs, temporary_path, write_atomically, write_json_atomically

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_crash_between_the_two_replaces_never_pairs_new_with_old(tmp_path, monkeypatch):
    bin_path, idx_path = str(tmp_path / "d.bin"), str(tmp_path / "d.idx")
    for path in (bin_path, idx_path):
        open(path, "w").write("old")
    real_replace, calls = os.replace, []

    def replace_then_crash(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError("simulated crash during the commit")
        real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", replace_then_crash)
    with pytest.raises(OSError):
        with atomic_outputs(bin_path, idx_path) as (tmp_bin, tmp_idx):
            open(tmp_bin, "w").write("new")
            open(tmp_idx, "w").write("new")
    assert open(bin_path).read() == "new" and not os.path.exists(idx_path)  # readers see no dataset


def test_exception_in_the_block_removes_temporaries_and_keeps_old_files(tmp_path):
    final = tmp_path / "f.txt"
    final.write_text("old")
    with pytest.raises(ValueError):
        with atomic_outputs(str(final)) as (temporary,):
            open(temporary, "w").write("half")
            raise ValueError("crash")
    assert os.listdir(tmp_path) == ["f.txt"] and final.read_text() == "old"


def test_write_atomically_takes_text_or_bytes_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "f")
    write_atomically(path, "caf\u00e9\n")
    assert open(path, "rb").read() == "caf\u00e9\n".encode()
    write_atomically(path, b"\x00\xff")
    assert open(path, "rb").read() == b"\x00\xff"
    assert os.listdir(tmp_path) == ["f"] and temporary_path(path) == f"{path}.tmp-{os.getpid()}"


def test_write_json_atomically_passes_the_dump_options(tmp_path):
    path = tmp_path / "v.json"
    write_json_atomically(str(path), {"a": [1, 2], "p": tmp_path}, indent=2)
    assert path.read_text() == json.dumps({"a": [1, 2], "p": str(tmp_path)}, indent=2)
