"""Static checks of scripts/slurm: shellcheck, the #SBATCH blocks, and the exact command each
script builds (PRINT_ONLY=1), with the paper's hyperparameters, overrides and containers."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.slurm_cluster import ensure_shellcheck

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "scripts" / "slurm"
SBATCH = sorted(SLURM_DIR.glob("*.sbatch"))
SCRIPTS = SBATCH + sorted(SLURM_DIR.glob("*.sh"))
SCRIPT_NAMES = ["llama-1.4b", "llama-7b", "gpt2-small", "gpt2-medium", "gpt2-large"]


def test_all_expected_scripts_exist():
    assert sorted(p.stem for p in SBATCH) == sorted(SCRIPT_NAMES)
    assert (SLURM_DIR / "common.sh").is_file() and (SLURM_DIR / "launch_node.sh").is_file()


def test_shellcheck_passes_on_every_script():
    shellcheck = ensure_shellcheck()
    res = subprocess.run([shellcheck, "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", SBATCH, ids=lambda p: p.stem)
def test_sbatch_block_is_contiguous_and_complete(script):
    lines = script.read_text().splitlines()
    assert lines[0].startswith("#!/bin/bash")
    # sbatch stops reading directives at the first line that is not a comment: every #SBATCH
    # line must come before any command (and pyxis users lose settings otherwise, F30).
    first_cmd = next(i for i, l in enumerate(lines) if l.strip() and not l.lstrip().startswith("#"))
    directives = [l for l in lines if l.startswith("#SBATCH")]
    assert all(lines.index(d) < first_cmd for d in directives)
    opts = " ".join(directives)
    for needed in ("--nodes=", "--ntasks-per-node=1", "--gpus-per-node=8", "--exclusive", "--requeue",
                   "--signal=B:USR1@", "--open-mode=append", "--output=", "--time="):
        assert needed in opts, f"{script.name} lacks {needed}"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def print_cmd(script: str, *args: str, **env) -> list[str]:
    """The launch command a script would run, as argv (PRINT_ONLY=1, outside Slurm)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    e.update(PRINT_ONLY="1", **{k: str(v) for k, v in env.items()})
    res = subprocess.run(["bash", str(SLURM_DIR / f"{script}.sbatch"), *args], env=e, capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return shlex.split(res.stdout.strip().splitlines()[-1])


def flags(argv: list[str]) -> dict[str, str]:
    """Training flags after the entry point: last value wins, as with argparse."""
    entry = next(i for i, a in enumerate(argv) if a.endswith((".py",)) and "pretrain" in a or "fake_trainer" in a)
    out, key = {}, None
    for a in argv[entry + 1:]:
        if a.startswith("--"):
            key = a
            out[key] = ""
        elif key is not None:
            out[key] = (out[key] + " " + a).strip()
    return out


PAPER_LLAMA = {"--seq-length": "4096", "--global-batch-size": "128", "--lr": "3e-4", "--min-lr": "3e-5",
               "--lr-decay-style": "cosine", "--weight-decay": "0.1", "--clip-grad": "1.0",
               "--adam-beta1": "0.9", "--adam-beta2": "0.95", "--seed": "2023", "--bf16": "",
               "--use-distributed-optimizer": "", "--exit-signal-handler": ""}


@pytest.mark.parametrize("script,model,tp,mbs,iters", [("llama-1.4b", "llama-1.4b", "1", "2", "50000"),
                                                       ("llama-7b", "llama-7b", "2", "4", "250000")])
def test_llama_scripts_carry_the_paper_hyperparameters(script, model, tp, mbs, iters):
    argv = print_cmd(script)
    f = flags(argv)
    for k, v in PAPER_LLAMA.items():
        assert f.get(k) == v, (k, f.get(k))
    assert f["--model"] == model and f["--tensor-model-parallel-size"] == tp
    assert f["--micro-batch-size"] == mbs and f["--train-iters"] == iters
    assert f["--lr-warmup-iters"] == "2000"  # min(2000, T/20)
    assert f["--reweight-strategy"] == "uniform" and "--reweight-r" not in f
    assert f["--save"] == f["--load"]  # a resubmit resumes from what it saved
    # 8 GPUs a node; one torchrun per node
    assert "--nproc_per_node=8" in argv and argv[argv.index("-m") + 1] == "torch.distributed.run"
    # the reweighting group (micro batch x DP over 8 nodes) is the paper's 128 sequences
    assert int(mbs) * (64 // int(tp)) == 128


def test_linupper_uses_our_warmup_and_r():
    f = flags(print_cmd("llama-1.4b", STRATEGY="linupper"))
    assert f["--reweight-strategy"] == "linupper"
    assert f["--reweight-r"] == "1.0" and f["--reweight-delta"] == "1.0"
    assert f["--reweight-warmup-iters"] == "2000" and f["--reweight-warmup-mode"] == "uniform"
    assert f["--reweight-group"] == "micro-batch"
    g = flags(print_cmd("gpt2-large", STRATEGY="linupper"))
    assert g["--reweight-r"] == "0.4" and g["--reweight-warmup-iters"] == "1000"
    h = flags(print_cmd("llama-7b", STRATEGY="linupper", REWEIGHT_GROUP="global-batch"))
    assert h["--reweight-group"] == "global-batch"


@pytest.mark.parametrize("script,gbs,mbs", [("gpt2-small", "32", "4"), ("gpt2-medium", "48", "6"),
                                            ("gpt2-large", "48", "6")])
def test_gpt2_scripts_carry_the_paper_hyperparameters(script, gbs, mbs):
    argv = print_cmd(script)
    f = flags(argv)
    assert argv[argv.index("--max_restarts=0") + 1].endswith("pretrain_gpt.py")
    expect = {"--model": script, "--seq-length": "512", "--global-batch-size": gbs, "--micro-batch-size": mbs,
              "--lr": "5e-4", "--min-lr": "1e-4", "--lr-warmup-iters": "500", "--train-iters": "20000",
              "--weight-decay": "0.01", "--adam-beta1": "0.9", "--adam-beta2": "0.999", "--adam-eps": "1e-8",
              "--clip-grad": "1.0", "--seed": "42"}
    for k, v in expect.items():
        assert f.get(k) == v, (k, f.get(k))
    assert "--bf16" not in f  # fp32 as the authors' GPT-2 code


def test_environment_overrides_and_extra_arguments_win():
    argv = print_cmd("llama-1.4b", "--train-iters", "100", "--lr", "1e-3", TP=2, MICRO_BATCH_SIZE=1,
                     GPUS_PER_NODE=4, DATA_PATH="0.3 /d/a_text_document 0.7 /d/b_text_document",
                     TOKENIZER_MODEL="/d/tok.model", OUTPUT_DIR="/scratch/run1", TENSORBOARD_DIR="",
                     PRECISION="fp32", DISTRIBUTED_OPTIMIZER=0, EXTRA_ARGS="--eval-iters 3")
    f = flags(argv)
    assert f["--tensor-model-parallel-size"] == "2" and f["--micro-batch-size"] == "1"
    assert "--nproc_per_node=4" in argv
    assert f["--data-path"] == "0.3 /d/a_text_document 0.7 /d/b_text_document"
    assert f["--tokenizer-model"] == "/d/tok.model"
    assert f["--save"] == "/scratch/run1/checkpoints" and "--tensorboard-dir" not in f
    assert "--bf16" not in f and "--use-distributed-optimizer" not in f
    assert f["--eval-iters"] == "3"
    # "$@" comes last, so argparse keeps it; the derived LR warm-up follows --train-iters
    assert argv[-4:] == ["--train-iters", "100", "--lr", "1e-3"]
    assert f["--train-iters"] == "100" and f["--lr"] == "1e-3" and f["--lr-warmup-iters"] == "5"


@pytest.mark.parametrize("script", ["llama-1.4b", "gpt2-small"])
def test_trainer_through_the_environment(script):
    """TRAINER=megatron-lm passes --trainer (Megatron-LM's loop); the default passes nothing (our loop)."""
    assert "--trainer" not in flags(print_cmd(script, MOCK_DATA=1))
    assert flags(print_cmd(script, MOCK_DATA=1, TRAINER="megatron-lm"))["--trainer"] == "megatron-lm"


@pytest.mark.parametrize("script", ["gpt2-small", "gpt2-medium", "gpt2-large"])
def test_the_papers_gpt2_data_through_the_environment(script, tmp_path):
    from megatron_patch.arguments import resolve_config
    from megatron_patch.domains import DOMAIN_WEIGHTS

    train = [f"/d/{d}_train_text_document" for d in DOMAIN_WEIGHTS["doge"]]
    valid = [p.replace("_train_", "_valid_") for p in train]
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_text("{}")
    merges.write_text("")
    argv = print_cmd(script, DATA_PATH=" ".join(train), VALID_DATA_PATH=" ".join(valid), DOMAIN_WEIGHTS="doge",
                     TOKENIZER_TYPE="GPT2BPETokenizer", VOCAB_FILE=vocab, MERGE_FILE=merges,
                     OUTPUT_DIR=tmp_path / "run")
    f = flags(argv)
    assert (f["--domain-weights"], f["--tokenizer-type"], f["--vocab-file"], f["--merge-file"]) == (
        "doge", "GPT2BPETokenizer", str(vocab), str(merges))
    assert f["--data-path"].split() == train and f["--valid-data-path"].split() == valid
    # What the entry point resolves from that command: the DoGE weight of each domain's prefix.
    entry = next(i for i, a in enumerate(argv) if a.endswith("pretrain_gpt.py"))
    config, _ = resolve_config(argv[entry + 1:], family="gpt", world_size=8, with_tokenizer=False)
    blend = dict(zip(config.data.data_path[1::2], map(float, config.data.data_path[0::2])))
    assert blend == {p: DOMAIN_WEIGHTS["doge"][p.split("/")[-1].split("_")[0]] for p in train}


def test_data_is_required_unless_mock():
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    res = subprocess.run(["bash", str(SLURM_DIR / "llama-1.4b.sbatch")], env=dict(e, OUTPUT_DIR="/nonexistent/x"),
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode != 0 and "DATA_PATH" in res.stderr


def test_multi_node_srun_geometry_and_containers():
    env = dict(SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="8", MASTER_ADDR="node001", SLURM_CPUS_ON_NODE="96")
    argv = print_cmd("llama-7b", **env)
    assert argv[0] == "srun"
    for a in ("--nodes=8", "--ntasks=8", "--ntasks-per-node=1", "--cpus-per-task=96", "--kill-on-bad-exit=1"):
        assert a in argv
    assert not any(a.startswith("--container") for a in argv)  # off by default
    assert "--nnodes=8" in argv and "--master_addr=node001" in argv and "--master_port=20077" in argv
    assert argv[argv.index("bash") + 1].endswith("scripts/slurm/launch_node.sh")

    pyxis = print_cmd("llama-7b", CONTAINER_IMAGE="/images/rw.sqsh", CONTAINER_MOUNTS="/data:/data",
                      OUTPUT_DIR="/scratch/r", **env)
    mounts = next(a for a in pyxis if a.startswith("--container-mounts=")).split("=", 1)[1].split(",")
    assert "--container-image=/images/rw.sqsh" in pyxis
    assert f"{REPO}:{REPO}" in mounts and "/scratch/r:/scratch/r" in mounts and "/data:/data" in mounts
    assert pyxis.index("--container-image=/images/rw.sqsh") < pyxis.index("bash")

    app = print_cmd("llama-7b", CONTAINER_IMAGE="/images/rw.sif", **env)
    i = app.index("exec")
    assert app[i - 1] in ("apptainer", "singularity") and "--nv" in app and "/images/rw.sif" in app
    assert app.index("/images/rw.sif") < app.index("bash")


def test_launch_node_inserts_the_node_rank():
    res = subprocess.run(["bash", str(SLURM_DIR / "launch_node.sh"), "python3", "-c",
                          "import sys; print(sys.argv[1:])", "-m", "torch.distributed.run", "x"],
                         env=dict(os.environ, SLURM_NODEID="3"), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "'-m', 'torch.distributed.run', '--node_rank=3', 'x'" in res.stdout


def dry_run(script: str, **env) -> str:
    """DRY_RUN=1 of a script's exact configuration (its #SBATCH node count, its layout)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    e.update(DRY_RUN="1", PYTHON=sys.executable, **{k: str(v) for k, v in env.items()})
    res = subprocess.run(["bash", str(SLURM_DIR / f"{script}.sbatch")], env=e, capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


@pytest.mark.parametrize("script,paper_params,dp", [("llama-1.4b", 1.364e9, 64), ("llama-7b", 6.738e9, 32)])
def test_dry_run_of_the_llama_scripts_fits_80gb(script, paper_params, dp):
    out = dry_run(script)
    n = int(re.search(r"^parameters: ([\d,]+)", out, re.M).group(1).replace(",", ""))
    assert abs(n - paper_params) / paper_params < 0.02, n
    assert re.search(rf"^layout: TP=\d PP=1 CP=1 DP={dp}, 1 micro-batch", out, re.M), out[-800:]
    assert re.search(r"^reweighting group: 128 samples", out, re.M)  # the paper's group
    assert re.search(r"^tokens per step: 524,288", out, re.M)
    total = float(re.search(r"^memory per GPU \(estimate, GiB\):.* = ([\d.]+)$", out, re.M).group(1))
    assert total * 1024**3 < 80e9 * 0.9, total  # with >= 10% left for CUDA context, NCCL, fragmentation
