"""tools/prepare_slimpajama.py on shards of SlimPajama's format made here: the seven domains, a train and a
validation split each (by hash, or SlimPajama's validation shards), the flags it prints, and what training
makes of them (--domain-weights)."""

import json
import os
import shlex

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_patch.arguments import resolve_config
from megatron_patch.domains import DOMAIN_WEIGHTS, SLIMPAJAMA_DOMAINS
from megatron_patch.tokenizer import tokenizer_flags
from tests.helpers.tokenizer_files import Reference
from tests.tools.helpers import TOOLS, fixture_texts, run_python, write_corpus
from tools.prepare_slimpajama import SET_NAMES, held_out, main

SET_OF = {domain: name for name, domain in SET_NAMES.items()}


def slimpajama_records(size: int = 1500, limit: int = 280):
    """Records as SlimPajama ships them: pieces of the fixture texts dealt round the seven domains."""
    texts = [t[k:k + size] for t in fixture_texts() for k in range(0, len(t), size)][:limit]
    return [{"text": f"{i}: {text}", "meta": {"redpajama_set_name": SET_OF[SLIMPAJAMA_DOMAINS[i % 7]]}}
            for i, text in enumerate(texts)]


def write_shards(directory, records, suffix=".jsonl.zst", shards=3):
    os.makedirs(directory, exist_ok=True)
    return [write_corpus(os.path.join(directory, f"example_train_{k}{suffix}"), records[k::shards])
            for k in range(shards)]


def documents(prefix):
    dataset = IndexedDataset(prefix)
    return [dataset[i].tolist() for i in range(len(dataset))]


@pytest.fixture(scope="module")
def gpt2(tokenizer_stand_ins):
    return tokenizer_stand_ins["GPT2BPETokenizer"]


def test_split_by_domain_and_hash(tmp_path, gpt2, capsys):
    records = slimpajama_records()
    paths = write_shards(tmp_path / "train", records)
    out = tmp_path / "out"
    manifest = main(["--input", str(tmp_path / "train" / "*.jsonl.zst"), "--output-dir", str(out),
                     *tokenizer_flags(gpt2), "--valid-fraction", "0.2", "--workers", "2"])
    reference = Reference(gpt2)
    read_order = [r for k in range(3) for r in records[k::3]]  # shard by shard, as the glob sorts them
    for domain in SLIMPAJAMA_DOMAINS:
        mine = [r["text"] for r in read_order if r["meta"]["redpajama_set_name"] == SET_OF[domain]]
        valid = [t for t in mine if held_out(t, 1234, 0.2)]
        train = [t for t in mine if t not in valid]
        assert valid and train  # 0.2 of 40 documents a domain
        for split, texts in (("train", train), ("valid", valid)):
            prefix = str(out / f"{domain}_{split}_text_document")
            assert documents(prefix) == [reference.encode(t) + [reference.eod] for t in texts]
            assert manifest["domains"][domain][split] == {"prefix": prefix, "documents": len(texts),
                                                          "tokens": sum(len(reference.encode(t)) + 1 for t in texts)}
    assert manifest["inputs"] == paths and manifest["eod_id"] == reference.eod
    printed = capsys.readouterr().out.strip()
    assert printed == (out / "flags.txt").read_text().strip() == shlex.join(manifest["flags"])
    # The printed flags train as they are, and --domain-weights doge then weights the seven prefixes.
    flags = shlex.split(printed)
    config, tokenizer = resolve_config(["--model", "tiny", "--train-iters", "1", *flags], family="gpt")
    assert tokenizer.vocab_size == reference.vocab_size and len(config.data.valid_data_path) == 7
    doge = [*flags[:flags.index("--domain-weights") + 1], "doge", *flags[flags.index("--domain-weights") + 2:]]
    config, _ = resolve_config(["--model", "tiny", "--train-iters", "1", *doge], family="gpt", with_tokenizer=False)
    blend = dict(zip(config.data.data_path[1::2], map(float, config.data.data_path[0::2])))
    assert blend == {str(out / f"{d}_train_text_document"): w for d, w in DOMAIN_WEIGHTS["doge"].items()}


def test_the_split_does_not_depend_on_workers_or_shards(tmp_path, gpt2):
    records = slimpajama_records(limit=100)
    write_shards(tmp_path / "a", records, shards=1)
    write_shards(tmp_path / "b", records[:40], suffix=".parquet", shards=1)
    write_shards(tmp_path / "b2", records[40:], shards=1)
    main(["--input", str(tmp_path / "a"), "--output-dir", str(tmp_path / "one"), *tokenizer_flags(gpt2), "--log-interval", "0"])
    main(["--input", str(tmp_path / "b"), str(tmp_path / "b2"), "--output-dir", str(tmp_path / "two"), *tokenizer_flags(gpt2),
          "--workers", "2"])
    for name in sorted(os.listdir(tmp_path / "one")):
        if name.endswith((".bin", ".idx")):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_validation_shards_and_missing_domains(tmp_path, gpt2, capsys):
    records = [r for r in slimpajama_records(limit=100) if r["meta"]["redpajama_set_name"] != SET_OF["github"]]
    write_shards(tmp_path / "train", records[10:], shards=2)
    valid = write_corpus(tmp_path / "example_holdout_0.jsonl.zst", records[:10])
    manifest = main(["--input", str(tmp_path / "train"), "--valid-input", valid, "--output-dir", str(tmp_path / "out"),
                     *tokenizer_flags(gpt2)])
    assert sum(c["valid"]["documents"] for c in manifest["domains"].values() if "valid" in c) == 10
    assert manifest["domains"]["github"] == {} and not (tmp_path / "out" / "github_train_text_document.bin").exists()
    assert "--domain-weights" not in manifest["flags"]
    assert "warning: no training document of github" in capsys.readouterr().err
    env = dict(line.split("=", 1) for line in (tmp_path / "out" / "slurm.env").read_text().splitlines())
    assert shlex.split(env["DATA_PATH"])[0].split() == manifest["flags"][1:7]
    assert env["TOKENIZER_TYPE"] == "GPT2BPETokenizer" and shlex.split(env["VOCAB_FILE"]) == [gpt2["vocab_file"]]


def test_an_unknown_set_name_is_one_error_line(tmp_path, gpt2):
    records = slimpajama_records(limit=100)[:5] + [{"text": "x", "meta": {"redpajama_set_name": "RedPajamaBooks"}}]
    write_corpus(tmp_path / "s.jsonl", records)
    proc = run_python([os.path.join(TOOLS, "prepare_slimpajama.py"), "--input", str(tmp_path / "s.jsonl"),
                       "--output-dir", str(tmp_path / "out"), *tokenizer_flags(gpt2)], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 's.jsonl'}:6: bad line (unknown meta.redpajama_set_name 'RedPajamaBooks'); fix the "
        "file, or pass --on-bad-line skip to skip bad lines and report them")
    assert not (tmp_path / "out").exists() or not [n for n in os.listdir(tmp_path / "out") if n.endswith(".idx")]


def test_meta_as_a_json_string(tmp_path, gpt2):
    records = [{"text": r["text"], "meta": json.dumps(r["meta"])} for r in slimpajama_records(limit=100)[:14]]
    write_corpus(tmp_path / "six_b.parquet", records)
    manifest = main(["--input", str(tmp_path / "six_b.parquet"), "--output-dir", str(tmp_path / "out"),
                     *tokenizer_flags(gpt2), "--valid-fraction", "0.01"])
    assert sum(c.get("train", {}).get("documents", 0) + c.get("valid", {}).get("documents", 0)
               for c in manifest["domains"].values()) == 14
