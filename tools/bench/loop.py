"""Loop efficiency: tokens/s of our training loop vs a bare megatron-core loop, same model and batch.

    python tools/bench/loop.py --rounds 5 --train-iters 40

*Ours* is ``pretrain_llama.py`` (the ``tiny`` preset on mock data, ``uniform``, 2 gloo
processes): its ``train_step`` (data pipeline, the loss function of :mod:`megatron_patch.loss`,
the guarded optimizer step, LR schedule). *Bare* runs
in the same layout (this module with ``--bare`` under torchrun): model, DDP wrapper and optimizer
from the same :func:`megatron_patch.training.build_model_and_optimizer`, then each step is
``get_forward_backward_func()`` over one pre-made batch with the masked-sum loss and
``optimizer.step()``, nothing else. Both take the ``ms_per_iter`` of each interval of
``--log-interval`` steps as the loop logs it (the time inside the steps; logging, evaluation
and checkpoints are outside) and leave out the first ``--skip-iters`` steps. The figure is the
median over ABBA rounds of ``tokens/s ours / tokens/s bare``. Target: >= 0.97. Flags after ``--`` go to both.
"""

if not __package__:  # run as a file: the repository root, not tools/bench/, goes first on sys.path
    import os, sys
    sys.path[0] = os.path.abspath(os.path.join(__file__, "..", "..", ".."))

import argparse
import functools
import itertools
import json
import os
import sys
import tempfile
import time

from megatron_patch.launch import run_torchrun
from megatron_patch.logging_utils import read_metrics
from tools.bench.abba import interleave, report_ratio
from tools.bench.harness import TINY_MOCK_FLAGS, machine, runs_parser, split_extra, steady_ms_per_iter, synthetic_batch

TARGET = 0.97
BASE_FLAGS = TINY_MOCK_FLAGS


def _masked_sum_loss(loss_mask, output_tensor):
    """Megatron's stock loss: the masked token-loss sum and the token count (the schedule divides)."""
    return (output_tensor.float() * loss_mask).sum(), loss_mask.sum().int(), {}


def _bare_forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])  # [b, s]
    return output, functools.partial(_masked_sum_loss, batch["loss_mask"])


def bare_loop(flags: list[str], log_interval: int, out_path: str) -> None:
    """The bare loop, one rank of a torchrun job; the last rank writes the interval times."""
    import torch
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_patch.arguments import resolve_config
    from megatron_patch.distributed import initialize_distributed, shutdown
    from megatron_patch.model import gpt_model_provider
    from megatron_patch.training import build_model_and_optimizer

    config, _ = resolve_config(flags, family="llama", world_size=int(os.environ["WORLD_SIZE"]))
    training, seq = config.training, config.model.seq_length
    device = initialize_distributed(config.parallel, seed=training.seed)
    model, optimizer, _ = build_model_and_optimizer(gpt_model_provider, config)
    rank = torch.distributed.get_rank()
    batch = {k: v.to(device) for k, v in synthetic_batch(training.micro_batch_size, seq, config.model.vocab_size,
                                                         seed=training.seed + rank).items()}
    forward_backward = get_forward_backward_func()
    interval_ms, seconds = [], 0.0
    for iteration in range(1, training.train_iters + 1):
        start = time.perf_counter()
        model.zero_grad_buffer()
        optimizer.zero_grad()
        forward_backward(forward_step_func=_bare_forward_step, data_iterator=itertools.repeat(batch),
                         model=[model], num_microbatches=training.num_microbatches, seq_length=seq,
                         micro_batch_size=training.micro_batch_size, forward_only=False)
        optimizer.step()
        seconds += time.perf_counter() - start
        if iteration % log_interval == 0:
            interval_ms.append({"iteration": iteration, "ms_per_iter": 1000 * seconds / log_interval})
            seconds = 0.0
    if rank == torch.distributed.get_world_size() - 1:
        with open(out_path, "w") as handle:
            json.dump(interval_ms, handle)
    shutdown()


def run_variant(variant: str, args: argparse.Namespace, extra: list[str]) -> float:
    """One run of ``ours`` or ``bare``; returns its steady-state tokens/s (all ranks together)."""
    flags = [*BASE_FLAGS, "--train-iters", str(args.train_iters), *extra]
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/out.json"
        if variant == "ours":
            run_torchrun(["pretrain_llama.py", *flags, "--log-interval", str(args.log_interval),
                          "--metrics-file", out], nproc=args.nproc)
            records = read_metrics(out, "train")
        else:
            run_torchrun(["-m", "tools.bench.loop", "--bare", "--log-interval", str(args.log_interval),
                          "--bare-out", out, "--", *flags], nproc=args.nproc)
            with open(out) as handle:
                records = json.load(handle)
        ms = steady_ms_per_iter(records, args.skip_iters)
    tokens_per_s = args.tokens_per_step / (ms / 1000)
    print(f"  {variant:>4}: {ms:8.1f} ms/step, {tokens_per_s:8.0f} tokens/s", flush=True)
    return tokens_per_s


def parse_args(argv):
    p = runs_parser(__doc__)
    p.add_argument("--log-interval", type=int, default=5, help="steps per timed interval")
    p.add_argument("--bare", action="store_true", help="internal: run the bare loop (under torchrun)")
    p.add_argument("--bare-out", help="internal: where the bare loop writes its interval times")
    return p.parse_args(argv)


def _tokens_per_step(extra: list[str], nproc: int) -> int:
    from megatron_patch.arguments import resolve_config

    config, _ = resolve_config([*BASE_FLAGS, "--train-iters", "1", *extra], family="llama", world_size=nproc)
    return config.training.global_batch_size * config.model.seq_length


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, extra = split_extra(argv)
    args = parse_args(own)
    if args.bare:
        return bare_loop(extra, args.log_interval, args.bare_out)
    args.tokens_per_step = _tokens_per_step(extra, args.nproc)
    print(f"machine: {machine()}")
    results = interleave(["ours", "bare"], args.rounds, lambda v: run_variant(v, args, extra))
    return report_ratio(results, "ours", "bare", what="loop efficiency", unit="tokens/s", target=TARGET,
                        at_most=False)


if __name__ == "__main__":
    main()
