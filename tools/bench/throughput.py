"""Throughput and MFU of the training step for any preset, on CPU or CUDA, with the reweighting cost.

    python tools/bench/throughput.py --model tiny
    python tools/bench/throughput.py --model llama-1.4b -- --micro-batch-size 2     # one GPU
    torchrun --nproc_per_node 8 tools/bench/throughput.py --model llama-7b -- --tensor-model-parallel-size 2

The step is the one our loop runs, :func:`megatron_patch.training.train_step` with
``pretrain_gpt.forward_step`` and the loss function of :mod:`megatron_patch.loss`, on the model,
DDP wrapper and optimizer of :func:`megatron_patch.training.build_model_and_optimizer`, over one
random batch kept in memory (no data loading, no logging). On CUDA it runs in bf16 (``--fp32``
to opt out) with Transformer Engine's layers when they import (``megatron_patch.model``).

Steps alternate ``uniform`` and ``--strategy`` in ABBA order in the same process, so the step
time ratio is measured under the same load. Reported, per device: tokens/s, model TFLOP/s from
:func:`megatron_patch.estimate.flops_per_token` (6 x matmul weights per token plus attention with
the causal mask counted at half), and MFU against ``--peak-tflops``, ``--gpu`` (the table in
``megatron_patch.estimate``) or the detected GPU; on CPU without ``--peak-tflops`` no MFU. The
reweighting cost is given twice: the step time ratio, and the extra time of the loss function
alone (forward and backward of ``reweighted_loss`` on a ``[b, s]`` loss, all-gather over DP
included) as a share of the uniform step. Flags after ``--`` are training flags.
"""

if not __package__:  # run as a file: the repository root, not tools/bench/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import argparse
import itertools
import json
import os
import statistics
import sys
import time

import torch
from megatron.core import parallel_state as ps

from megatron_patch.arguments import resolve_config
from megatron_patch.checkpointing import LoopState
from megatron_patch.distributed import initialize_distributed, shutdown
from megatron_patch.estimate import PEAK_TFLOPS, flops_per_token, parameter_count
from megatron_patch.launch import free_port
from megatron_patch.loss import ReweightConfig, SampleLoss, reweighted_loss
from megatron_patch.model import gpt_model_provider, transformer_engine_available
from megatron_patch.presets import PRESETS
from megatron_patch.training import Run, build_model_and_optimizer, train_step
from pretrain_gpt import forward_step
from tools.bench.abba import interleave
from tools.bench.harness import machine, split_extra, synthetic_batch

DEFAULT_VOCAB = 8192  # for presets without a vocabulary (tiny, gpt2-mini): the size of our tokenizer
# Substrings of torch.cuda.get_device_name() -> the key of megatron_patch.estimate.PEAK_TFLOPS.
GPU_NAMES = (("h100 pcie", "h100-pcie"), ("h200", "h200"), ("h100", "h100-sxm"), ("a100", "a100"))


def detect_gpu(device_name: str) -> str | None:
    """The peak-table key for a CUDA device name, or None when it is not in the table."""
    name = device_name.lower()
    if "nvl" in name:
        return None
    return next((key for part, key in GPU_NAMES if part in name), None)


def peak_tflops(args, cuda: bool) -> tuple[float | None, str]:
    """(peak TFLOP/s or None, where it came from)."""
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    key = args.gpu
    if key is None and cuda:
        key = detect_gpu(torch.cuda.get_device_name())
    return (PEAK_TFLOPS[key], f"{key} dense bf16") if key else (None, "unknown; pass --peak-tflops")


def training_config(args, extra: list[str], world_size: int):
    """The resolved run configuration of the benchmarked model."""
    flags = ["--model", args.model, "--train-iters", str(args.warmup + 2 * args.steps),
             "--mock-data", "--tokenizer-type", "NullTokenizer"]
    if "vocab_size" not in PRESETS[args.model] and "--vocab-size" not in extra:
        flags += ["--vocab-size", str(DEFAULT_VOCAB)]
    if torch.cuda.is_available() and not args.fp32:
        flags.append("--bf16")
    family = "gpt" if args.model.startswith("gpt") else "llama"
    return resolve_config([*flags, *extra], family=family, world_size=world_size)[0]


def time_step(run_step, cuda: bool) -> float:
    """Seconds of one ``run_step()``, the device synchronised on both sides."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    run_step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def loss_func_ms(config, configs: dict, reps: int, cuda: bool) -> dict[str, float]:
    """Median ms of ``reweighted_loss`` forward + backward per config, on a ``[b, s]`` loss."""
    device = torch.cuda.current_device() if cuda else "cpu"
    shape = (config.training.micro_batch_size, config.model.seq_length)
    token_loss = (torch.rand(*shape, device=device) * 10).requires_grad_()
    mask = torch.ones(*shape, device=device)
    dp_group = ps.get_data_parallel_group()

    def run(config):
        loss, num_tokens, _ = reweighted_loss(mask, token_loss, strategy=config.strategy, r=config.r_at(0),
                                              delta=config.delta, dp_group=dp_group)
        (loss / num_tokens).backward()

    times = interleave(list(configs), reps + 2, lambda name: time_step(lambda: run(configs[name]), cuda))
    return {name: 1000 * statistics.median(t[2:]) for name, t in times.items()}


def measure(args, extra: list[str]) -> dict:
    """Build the model, time the steps, return the figures (every rank computes them)."""
    world_size = int(os.environ["WORLD_SIZE"])
    config = training_config(args, extra, world_size)
    m, training, parallel = config.model, config.training, config.parallel
    initialize_distributed(parallel, seed=training.seed)
    cuda = torch.cuda.is_available()
    model, optimizer, scheduler = build_model_and_optimizer(gpt_model_provider, config)
    batch = synthetic_batch(training.micro_batch_size, m.seq_length, m.vocab_size,
                            seed=training.seed + torch.distributed.get_rank())
    configs = {"uniform": ReweightConfig(), args.strategy: ReweightConfig(strategy=args.strategy, r=args.r)}
    state = LoopState()
    # One run per strategy around the same model, optimizer and loop state; the loop's own train_step.
    runs = {name: Run(config, model, optimizer, scheduler, None, state, SampleLoss(c, ps.get_data_parallel_group()))
            for name, c in configs.items()}
    data_iter = itertools.repeat(batch)

    def step(name):
        train_step(runs[name], forward_step, data_iter)
        state.iteration += 1

    for _ in range(args.warmup):
        step("uniform")
    step_s = interleave(list(configs), args.steps, lambda name: time_step(lambda: step(name), cuda))
    step_ms = {name: 1000 * statistics.median(t) for name, t in step_s.items()}
    loss_ms = loss_func_ms(config, configs, args.loss_reps, cuda)

    tokens_per_step = training.global_batch_size * m.seq_length
    tokens_per_s_per_device = tokens_per_step / (step_ms["uniform"] / 1000) / world_size
    tflops = tokens_per_s_per_device * flops_per_token(m) / 1e12
    peak, peak_source = peak_tflops(args, cuda)
    figures = {
        "model": args.model, "parameters": parameter_count(m), "layers": m.num_layers,
        "seq_length": m.seq_length, "micro_batch_size": training.micro_batch_size,
        "global_batch_size": training.global_batch_size, "world_size": world_size,
        "layout": f"TP={parallel.tensor_model_parallel_size} PP={parallel.pipeline_model_parallel_size} "
                  f"DP={parallel.data_parallel_size}",
        "dtype": "bf16" if training.bf16 else "fp32", "transformer_engine": transformer_engine_available(),
        "device": torch.cuda.get_device_name() if cuda else "cpu", "flops_per_token": flops_per_token(m),
        "step_ms": step_ms, "tokens_per_s_per_device": tokens_per_s_per_device, "model_tflops_per_device": tflops,
        "peak_tflops": peak, "peak_source": peak_source, "mfu": tflops / peak if peak else None,
        "step_time_ratio": step_ms[args.strategy] / step_ms["uniform"],
        "loss_func_ms": loss_ms,
        "loss_func_extra_share": (loss_ms[args.strategy] - loss_ms["uniform"]) / step_ms["uniform"],
        "max_memory_gib": torch.cuda.max_memory_allocated() / 1024**3 if cuda else None,
    }
    shutdown()
    return figures


def report(f: dict, strategy: str) -> str:
    lines = [
        f"model {f['model']}: {f['parameters'] / 1e6:.1f}M parameters, {f['layers']} layers, seq {f['seq_length']}, "
        f"micro batch {f['micro_batch_size']}, global batch {f['global_batch_size']}, {f['layout']}, {f['dtype']}, "
        f"Transformer Engine: {f['transformer_engine']}, device: {f['device']}",
        f"step time (median): uniform {f['step_ms']['uniform']:.1f} ms, {strategy} {f['step_ms'][strategy]:.1f} ms",
        f"tokens/s per device: {f['tokens_per_s_per_device']:.0f}",
        f"model TFLOP/s per device: {f['model_tflops_per_device']:.3f} ({f['flops_per_token']:.4g} FLOPs per token, "
        "causal attention at half)",
        f"MFU: {f['mfu']:.1%} of {f['peak_tflops']} TFLOP/s ({f['peak_source']})" if f["mfu"] is not None
        else f"MFU: not computed (peak {f['peak_source']})",
        f"reweighting ({strategy}): step time ratio {f['step_time_ratio']:.4f}; loss function "
        f"{f['loss_func_ms']['uniform']:.3f} -> {f['loss_func_ms'][strategy]:.3f} ms, "
        f"extra = {f['loss_func_extra_share']:.3%} of the step",
    ]
    if f["max_memory_gib"] is not None:
        lines.append(f"peak memory allocated: {f['max_memory_gib']:.1f} GiB")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--loss-reps", type=int, default=50, help="timed loss-function calls per variant")
    p.add_argument("--strategy", default="linupper", help="compared with uniform")
    p.add_argument("--r", type=float, default=1.0, help="its temperature")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s of one device (overrides --gpu)")
    p.add_argument("--gpu", choices=sorted(PEAK_TFLOPS), help="take the peak from the table")
    p.add_argument("--fp32", action="store_true", help="on CUDA, train in fp32 instead of bf16")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, extra = split_extra(argv)
    args = parse_args(own)
    if "WORLD_SIZE" not in os.environ:  # plain `python -m`: a one-process group
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    rank = int(os.environ["RANK"])
    if rank == 0:
        print(f"machine: {machine()}", flush=True)
    figures = measure(args, extra)
    if rank == 0:
        print(report(figures, args.strategy), flush=True)
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as handle:
                json.dump({"machine": machine(), "argv": argv, **figures}, handle, indent=1)
    return figures


if __name__ == "__main__":
    main()
