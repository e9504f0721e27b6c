"""The committed checkpoints of tests/e2e/test_cross_version.py, one written by each tested
megatron-core release: 0.19 must load and resume 0.16.1's, 0.16.1 must refuse 0.19's in one line.

Regenerate them from the repository root (about a minute each, more on busy cores)::

    .venv/bin/python -m tests.helpers.checkpoint_fixture      # megatron-core 0.16.1
    .venv312/bin/python -m tests.helpers.checkpoint_fixture   # megatron-core 0.19.2

Each writes ``tests/e2e/fixtures/checkpoint-mcore-<version>/``: ``data/tokens.{bin,idx}`` (random
token ids; NullTokenizer), ``ckpt/`` (a 2-process run of a 1-layer, 16-wide Llama on that data,
saved at iteration 2), ``weights.pt`` (every parameter as that release loads it from ``ckpt/``)
and ``continued.json`` (the ``lm loss`` of iterations 3 and 4 when that release resumes ``ckpt/``).
Real data, not --mock-data: megatron-core 0.19 orders its mock samples differently from 0.16.1,
while both build the same samples from a .bin/.idx dataset.
"""

import io
import json
import os
import shutil
import tempfile

import numpy
import torch

from megatron_patch.launch import ROOT, run_torchrun

FIXTURES = os.path.join(ROOT, "tests", "e2e", "fixtures")
SAVED_ITERATION, RESUMED_ITERS = 2, 4
NPROC = 2
VOCAB = 64
# Small enough to commit (about 200 kB with Adam's state), real enough to cover every kind of
# parameter: embedding, attention, SwiGLU MLP, RMSNorms, untied output layer.
MODEL_FLAGS = ["--model", "tiny", "--num-layers", "1", "--hidden-size", "16", "--num-attention-heads", "2",
               "--ffn-hidden-size", "32", "--seq-length", "16", "--max-position-embeddings", "16",
               "--tokenizer-type", "NullTokenizer", "--vocab-size", str(VOCAB), "--make-vocab-size-divisible-by", "64",
               "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", str(RESUMED_ITERS),
               "--lr", "1e-3", "--lr-warmup-iters", "1", "--log-interval", "1", "--eval-interval", "1000",
               "--eval-iters", "1", "--reweight-strategy", "linupper", "--reweight-r", "0.5"]


def fixture_dir(version: str) -> str:
    """The fixture written by megatron-core ``version``."""
    return os.path.join(FIXTURES, f"checkpoint-mcore-{version}")


def flags(version: str) -> list[str]:
    """The run's flags, on the data of ``version``'s fixture (a path relative to the repository:
    the checkpoint records the blend, and a resume refuses another one)."""
    prefix = os.path.relpath(os.path.join(fixture_dir(version), "data", "tokens"), ROOT)
    return [*MODEL_FLAGS, "--data-path", prefix]


def write_data(prefix: str, documents: int = 128) -> None:
    """``documents`` documents of 20-80 random ids below :data:`VOCAB` (seeded), as ``prefix.bin/.idx``."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = numpy.random.default_rng(0)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.uint16)
    for _ in range(documents):
        builder.add_item(torch.from_numpy(rng.integers(0, VOCAB, rng.integers(20, 80)).astype(numpy.int64)))
        builder.end_document()
    builder.finalize(prefix + ".idx")


def train(version: str, ckpt: str, metrics: str, *extra: str) -> None:
    """Train ``version``'s fixture run to iteration :data:`RESUMED_ITERS` (or as ``extra`` says),
    resuming from and saving to ``ckpt`` every :data:`SAVED_ITERATION` iterations."""
    run_torchrun(["pretrain_llama.py", *flags(version), "--save", ckpt, "--load", ckpt,
                  "--save-interval", str(SAVED_ITERATION), "--metrics-file", metrics, *extra], NPROC, timeout=600)


def train_losses(metrics: str) -> dict[int, float]:
    from megatron_patch.logging_utils import read_metrics

    return {r["iteration"]: r["lm loss"] for r in read_metrics(metrics, "train")}


def _load_parameters(version: str, ckpt: str) -> bytes:
    from megatron_patch import checkpointing
    from megatron_patch.distributed import set_seeds
    from megatron_patch.model import gpt_model_provider
    from megatron_patch.training import build_model_and_optimizer
    from tests.helpers.config import config_of

    config = config_of([*flags(version), "--load", ckpt])
    set_seeds(config.training.seed)
    model, optimizer, _ = build_model_and_optimizer(gpt_model_provider, config)
    state = checkpointing.load_checkpoint(ckpt, model, optimizer)
    buffer = io.BytesIO()  # bytes, not tensors: a tensor sent back shares memory with the exiting rank
    torch.save({"iteration": state.iteration,
                "parameters": {name: p.detach().clone() for name, p in model.module.named_parameters()}}, buffer)
    return buffer.getvalue()


def loaded_parameters(version: str, ckpt: str) -> dict:
    """``{"iteration", "parameters": {name: tensor}}``: ``ckpt`` (a copy of ``version``'s) loaded
    into a fresh model by the megatron-core that runs this."""
    from tests.helpers.distributed import run_distributed

    [loaded] = run_distributed(_load_parameters, world_size=1, version=version, ckpt=ckpt)
    return torch.load(io.BytesIO(loaded))


def main() -> None:
    from megatron_patch.version_guard import installed_version

    version = installed_version()
    fixture = fixture_dir(version)
    shutil.rmtree(fixture, ignore_errors=True)
    os.makedirs(os.path.join(fixture, "data"))
    write_data(os.path.join(fixture, "data", "tokens"))
    ckpt = os.path.relpath(os.path.join(fixture, "ckpt"), ROOT)  # run.json records it
    with tempfile.TemporaryDirectory() as tmp:
        train(version, ckpt, os.path.join(tmp, "saved.jsonl"), "--exit-interval", str(SAVED_ITERATION))
        resumed = os.path.join(tmp, "resumed")
        shutil.copytree(os.path.join(ROOT, ckpt), resumed)
        train(version, resumed, os.path.join(tmp, "resumed.jsonl"))
        continued = train_losses(os.path.join(tmp, "resumed.jsonl"))
    loaded = loaded_parameters(version, os.path.join(ROOT, ckpt))
    torch.save(loaded["parameters"], os.path.join(fixture, "weights.pt"))
    with open(os.path.join(fixture, "continued.json"), "w") as f:
        json.dump({"megatron_core": version, "lm_loss": {str(i): continued[i] for i in sorted(continued)}}, f,
                  indent=1)
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(fixture) for n in names)
    print(f"wrote {fixture} ({size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
