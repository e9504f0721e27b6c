"""tools/prepare_data.py on the committed fixtures: the manifest against the files it names, the command."""

import json

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from tools.prepare_data import build_fixture_dataset, main


pytestmark = pytest.mark.usefixtures("no_network")  # all of it works offline


def test_fixture_dataset_manifest_matches_the_files(tmp_path):
    manifest = build_fixture_dataset(str(tmp_path), vocab_size=512, with_redundant=True)
    assert manifest["vocab_size"] == 512 and manifest["eod_id"] == 2 and manifest["dtype"] == "uint16"
    train_blend = manifest["train_data_path"].split()
    weights, prefixes = [float(w) for w in train_blend[::2]], train_blend[1::2]
    assert abs(sum(weights) - 1) < 1e-5
    total = 0
    for domain, record in manifest["domains"].items():
        for split, info in record["splits"].items():
            dataset = IndexedDataset(info["prefix"])
            lengths = dataset.sequence_lengths
            assert len(dataset) == info["documents"] and int(np.sum(lengths)) == info["tokens"]
            assert all(dataset[i][-1] == 2 for i in range(len(dataset)))  # every document ends in eod
            if split == "train":
                total += info["tokens"]
                assert prefixes[list(manifest["domains"]).index(domain)] == info["prefix"]
    assert manifest["tokens"]["train"] == total
    assert weights == pytest.approx([manifest["domains"][d]["splits"]["train"]["tokens"] / total
                                     for d in manifest["domains"]], abs=1e-6)
    assert "redundant" not in manifest["valid_data_path"]
    assert build_fixture_dataset(str(tmp_path), vocab_size=512, with_redundant=True) == manifest


def test_prepare_data_command_prints_the_blend_flags(tmp_path, capsys):
    main(["--out", str(tmp_path), "--fixtures", "--vocab-size", "512", "--workers", "1", "--domains", "code", "math"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["domains"]) == {"code", "math"}
    out = capsys.readouterr().out.splitlines()
    assert out == [f"--train-data-path {manifest['train_data_path']}", f"--valid-data-path {manifest['valid_data_path']}"]
