"""``pretrain(...)``: our training loop on megatron-core parts, shaped like Megatron-LM's.

The entry points hand over a datasets provider, a model provider and a forward step; the loop
builds megatron-core's DDP model, optimizer and LR schedule, runs ``get_forward_backward_func()``
for each step, and does the bookkeeping: logging, evaluation, checkpoints, exits. Reweighting
is not visible here: the forward step returns the loss function of :mod:`megatron_patch.loss`,
which carries it; the loop only passes the iteration (for r) and collects the report.
"""

import dataclasses
import json
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from . import checkpointing
from .arguments import ArgumentError, no_effect_flags_given, parse_args, validate_args
from .cpu_compat import apply_cpu_shims
from .data import batch_iterator, build_tokenizer
from .estimate import dry_run_report
from .logging_utils import MetricsSink, ReportAccumulator, console_line, reduce_pairs, summarise_train
from .loss import ReweightConfig, check_reweighting_supported, make_loss_func
from .run_record import check_resume, write_run_record


@dataclasses.dataclass
class StepInfo:
    """What a forward step needs besides the batch and the model (passed, never global)."""

    iteration: int
    reweight: ReweightConfig
    dp_group: object
    num_domains: int
    on_group: object = None

    def loss_func(self, loss_mask, domain_ids=None):
        """The reweighted ``loss_func`` for this step's micro-batch (megatron-core contract)."""
        return make_loss_func(loss_mask, self.reweight, self.iteration, self.dp_group,
                              domain_ids=domain_ids if self.num_domains > 1 else None,
                              num_domains=self.num_domains if self.num_domains > 1 else 0,
                              on_group=self.on_group)


def log_rank0(message: str) -> None:
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(message, flush=True)


def _is_logging_rank() -> bool:
    return torch.distributed.get_rank() == torch.distributed.get_world_size() - 1


def initialize(args) -> None:
    """Process group (env:// from torchrun), model-parallel groups, seeds."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "nccl"
    else:
        apply_cpu_shims()
        backend = "gloo"
    torch.distributed.init_process_group(backend)
    ps.initialize_model_parallel(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
    )
    # Different PP stages draw different numbers; TP ranks get their own streams from the tracker.
    seed = args.seed + 100 * ps.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def build_model(model_provider, args):
    model = model_provider(args, pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage())
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    config = model.config
    if args.bf16 or args.fp16:
        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=args.bf16 or args.fp16,
        use_distributed_optimizer=args.use_distributed_optimizer,
    )
    model = DistributedDataParallel(config, ddp_config, model)
    opt_config = OptimizerConfig(
        optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        clip_grad=args.clip_grad, bf16=args.bf16, fp16=args.fp16,
        use_distributed_optimizer=args.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(opt_config, [model])
    samples = args.global_batch_size
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if args.lr_warmup_iters else args.lr, max_lr=args.lr, min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_iters * samples, lr_decay_steps=args.lr_decay_iters * samples,
        lr_decay_style=args.lr_decay_style, start_wd=args.weight_decay, end_wd=args.weight_decay,
        wd_incr_steps=args.train_iters * samples, wd_incr_style="constant",
    )
    # The schedule calls these to finish gradients (DP all-reduce, embedding ties) and scale losses.
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = model.no_sync
    return model, optimizer, scheduler


class ExitSignal:
    """Remembers SIGTERM (Slurm's notice before a kill) so the loop can save and exit cleanly."""

    def __init__(self, enabled: bool):
        self.received = False
        if enabled:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True

    def any_rank(self) -> bool:
        flag = torch.tensor([1.0 if self.received else 0.0],
                            device="cuda" if torch.cuda.is_available() else "cpu")
        torch.distributed.all_reduce(flag)
        return bool(flag.item())


def evaluate(forward_step, model, valid, args, state, reweight) -> dict:
    """Unweighted validation loss and perplexity per domain, on the fixed validation sets."""
    model.eval()
    step = StepInfo(state.iteration, ReweightConfig(), ps.get_data_parallel_group(), num_domains=0)
    results = {}
    for name, dataset in valid.items():
        it = batch_iterator(dataset, consumed_samples=0, micro_batch_size=args.micro_batch_size,
                            dp_rank=ps.get_data_parallel_rank(), dp_size=args.data_parallel_size)
        acc = ReportAccumulator()
        with torch.no_grad():
            for _ in range(args.eval_iters):
                reports = get_forward_backward_func()(
                    forward_step_func=lambda data, m: forward_step(data, m, step),
                    data_iterator=it, model=[model], num_microbatches=args.num_microbatches,
                    seq_length=args.seq_length, micro_batch_size=args.micro_batch_size, forward_only=True)
                acc.add(reports)
        if ps.is_pipeline_last_stage():
            total, count = acc.pop(ps.get_data_parallel_group())["lm loss"]
            loss = total / max(count, 1)
            results[name] = {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
    model.train()
    return results


def pretrain(datasets_provider, model_provider, forward_step, *, family: str, argv=None) -> None:
    """Parse flags, build everything, train; the one call an entry point makes."""
    try:
        args = parse_args(argv, family=family)
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        if args.dry_run:
            validate_args(args, world_size)
            print(json.dumps(vars(args), indent=1, sort_keys=True, default=str))
            print(dry_run_report(args))
            return
        validate_args(args, world_size)
        reweight = ReweightConfig.from_args(args)
        check_reweighting_supported(reweight, context_parallel_size=args.context_parallel_size,
                                    calculate_per_token_loss=args.calculate_per_token_loss)
        tokenizer = build_tokenizer(args)
        if args.vocab_size is not None and tokenizer.vocab_size > args.vocab_size:
            raise ArgumentError(f"--tokenizer-model has {tokenizer.vocab_size} tokens, more than --vocab-size "
                                f"{args.vocab_size}; raise --vocab-size or drop it to take the tokenizer's")
        args.vocab_size = args.vocab_size or tokenizer.vocab_size
        validate_args(args, world_size)
    except (ArgumentError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    initialize(args)
    for flag in no_effect_flags_given(args):
        log_rank0(f"note: {flag} has no effect here (a GPU kernel/overlap option of Megatron-LM)")
    model, optimizer, scheduler = build_model(model_provider, args)
    state = checkpointing.LoopState(layout=dict(dp=args.data_parallel_size, tp=args.tensor_model_parallel_size,
                                                pp=args.pipeline_model_parallel_size, cp=args.context_parallel_size))
    data = datasets_provider(args, tokenizer)
    state.blend = {"prefixes": data.blend[0], "weights": data.blend[1]}
    state.reweight = {"strategy": reweight.strategy, "delta": reweight.delta, **reweight.schedule.state_dict()}
    if args.load:
        loaded = checkpointing.load_checkpoint(args.load, model, optimizer, load_optim=not args.no_load_optim,
                                               load_rng=not args.no_load_rng)
        if loaded is None:
            log_rank0(f"--load {args.load}: no checkpoint yet, starting from scratch")
        else:
            check_resume(loaded, state, override_blend=args.override_data_blend)
            scheduler.load_state_dict(loaded.scheduler)
            state.iteration, state.consumed_samples = loaded.iteration, loaded.consumed_samples
            state.skipped_iterations = loaded.skipped_iterations
            log_rank0(f"resumed from {args.load} at iteration {state.iteration} "
                      f"({state.consumed_samples} samples consumed)")
    if args.save and torch.distributed.get_rank() == 0:
        write_run_record(args.save, args, reweight)
    train(forward_step, model, optimizer, scheduler, data, args, state, reweight)


def train(forward_step, model, optimizer, scheduler, data, args, state, reweight) -> None:
    """The loop: steps, logging, evaluation, checkpoints, exits."""
    dp_group = ps.get_data_parallel_group()
    sink = MetricsSink(args.metrics_file if _is_logging_rank() else None,
                       args.tensorboard_dir if _is_logging_rank() else None)
    exit_signal = ExitSignal(args.exit_signal_handler)
    data_iter = batch_iterator(data.train, consumed_samples=state.consumed_samples,
                               micro_batch_size=args.micro_batch_size, dp_rank=ps.get_data_parallel_rank(),
                               dp_size=args.data_parallel_size, num_workers=args.num_workers)
    acc, grad_norms, start = ReportAccumulator(), [], time.perf_counter()
    last_group = {}
    run_start = time.time()
    model.train()
    while state.iteration < args.train_iters:
        step = StepInfo(state.iteration, reweight, dp_group, num_domains=len(data.domains),
                        on_group=lambda losses, ids: last_group.update(losses=losses, ids=ids))
        for chunk in [model]:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        reports = get_forward_backward_func()(
            forward_step_func=lambda data_iterator, m: forward_step(data_iterator, m, step),
            data_iterator=data_iter, model=[model], num_microbatches=args.num_microbatches,
            seq_length=args.seq_length, micro_batch_size=args.micro_batch_size, forward_only=False)
        updated, grad_norm, _ = optimizer.step()
        if updated:
            scheduler.step(increment=args.global_batch_size)
        else:
            state.skipped_iterations += 1
        state.iteration += 1
        state.consumed_samples += args.global_batch_size
        acc.add(reports)
        grad_norms.append(grad_norm)

        if state.iteration % args.log_interval == 0:
            elapsed = time.perf_counter() - start
            pairs = acc.pop(dp_group) if ps.is_pipeline_last_stage() else {}
            if _is_logging_rank():
                record = {"kind": "train", "iteration": state.iteration, "consumed_samples": state.consumed_samples,
                          "tokens": state.consumed_samples * args.seq_length, "lr": scheduler.get_lr(optimizer.param_groups[0]),
                          "grad_norm": grad_norms[-1], "ms_per_iter": 1000 * elapsed / len(grad_norms),
                          "tokens_per_s": len(grad_norms) * args.global_batch_size * args.seq_length / elapsed,
                          "skipped": state.skipped_iterations, **summarise_train(pairs, data.domains)}
                print(console_line(record, args.train_iters), flush=True)
                sink.write(record)
                if "losses" in last_group:
                    sink.write({"kind": "group", "iteration": state.iteration, "strategy": reweight.strategy,
                                "r": reweight.r_at(state.iteration - 1), "delta": reweight.delta,
                                "losses": last_group["losses"].tolist(),
                                "domain_ids": last_group["ids"].tolist() if last_group["ids"] is not None else None})
            grad_norms, start = [], time.perf_counter()

        if data.valid and (state.iteration % args.eval_interval == 0 or state.iteration == args.train_iters):
            results = evaluate(forward_step, model, data.valid, args, state, reweight)
            if _is_logging_rank() and results:
                losses = [r["loss"] for r in results.values()]
                mean = sum(losses) / len(losses)
                record = {"kind": "valid", "iteration": state.iteration,
                          "tokens": state.consumed_samples * args.seq_length,
                          "loss": mean, "ppl": math.exp(min(mean, 50.0)), "domains": results}
                print(" validation at iteration {}: {}".format(state.iteration, " | ".join(
                    f"{k} loss {v['loss']:.4f} ppl {v['ppl']:.2f}" for k, v in results.items())), flush=True)
                sink.write(record)
            start = time.perf_counter()

        stop = _should_exit(args, state, exit_signal, run_start)
        due = args.save and args.save_interval and state.iteration % args.save_interval == 0
        if args.save and (due or stop or state.iteration == args.train_iters):
            state.scheduler = scheduler.state_dict()
            checkpointing.save_checkpoint(args.save, model, optimizer, state, log=log_rank0)
            start = time.perf_counter()
        if stop:
            log_rank0(f"exiting at iteration {state.iteration}: {stop}")
            break
    sink.close()
    torch.distributed.barrier()
    ps.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def _should_exit(args, state, exit_signal, run_start) -> str | None:
    """The reason to stop after this iteration, agreed by all ranks; None to go on."""
    if args.exit_signal_handler and exit_signal.any_rank():
        return "received SIGTERM (--exit-signal-handler)"
    if args.exit_interval and state.iteration % args.exit_interval == 0:
        return f"--exit-interval {args.exit_interval}"
    if args.exit_duration_in_mins is not None:
        elapsed = torch.tensor([(time.time() - run_start) / 60.0])
        torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
        if elapsed.item() > args.exit_duration_in_mins:
            return f"--exit-duration-in-mins {args.exit_duration_in_mins}"
    return None
