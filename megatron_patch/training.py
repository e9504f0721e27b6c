"""``pretrain(...)``: our training loop on megatron-core parts, shaped like Megatron-LM's.

The entry points hand over a datasets provider, a model provider and a forward step; the loop
builds megatron-core's DDP model, optimizer and LR schedule, runs ``get_forward_backward_func()``
for each step, and does the bookkeeping: logging, evaluation, checkpoints, exits. Reweighting
is not visible here: the forward step returns the loss function of :mod:`megatron_patch.loss`,
which carries it; the loop only passes the iteration (for r) and collects the report.
"""

import contextlib
import dataclasses
import json
import math
import os
import sys
import time

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from . import checkpointing
from .arguments import ArgumentError, no_effect_flags_given, parse_args, validate_args
from .data import batch_iterator, build_tokenizer, check_data_args, consumed_per_dataset
from .distributed import initialize_distributed, is_logging_rank, print_rank0, shutdown
from .estimate import dry_run_report
from .exits import ExitConditions
from .health import WeightHealth, WeightHealthConfig
from .model import check_per_token_loss_path
from .logging_utils import MetricsSink, ReportAccumulator, console_line, summarise_train, validation_line
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
        many = self.num_domains > 1
        return make_loss_func(loss_mask, self.reweight, self.iteration, self.dp_group,
                              domain_ids=domain_ids if many else None, num_domains=self.num_domains if many else 0,
                              on_group=self.on_group)


def pretrain(datasets_provider, model_provider, forward_step, *, family: str, argv=None) -> None:
    """Parse flags, build everything, train; the one call an entry point makes.

    Args:
        datasets_provider: ``(args, tokenizer) -> DataSetup`` (see :mod:`megatron_patch.data`).
        model_provider: ``(args, pre_process, post_process) -> GPTModel`` for this rank's stage.
        forward_step: ``(data_iterator, model, step: StepInfo) -> (output_tensor, loss_func)``.
        family: ``llama`` or ``gpt`` (the defaults of the layout).
        argv: the flags; ``sys.argv[1:]`` when None.
    """
    try:
        args, reweight, health, tokenizer = resolve_args(argv, family)
    except (ArgumentError, ValueError) as err:
        # Every process finds the same mistake: one copy of the line (RANK is set by torchrun/srun).
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if args is None:  # --dry-run printed its report
        return
    initialize_distributed(tensor_model_parallel_size=args.tensor_model_parallel_size,
                           pipeline_model_parallel_size=args.pipeline_model_parallel_size,
                           context_parallel_size=args.context_parallel_size, seed=args.seed,
                           timeout_minutes=args.distributed_timeout_minutes)
    for flag in no_effect_flags_given(args):
        print_rank0(f"note: {flag} has no effect here (see docs/flags.md)")
    try:
        model, optimizer, scheduler = build_model_and_optimizer(model_provider, args)
        # Reweighting needs per-token losses: refuse any loss path that would silently not give them.
        check_per_token_loss_path(model, reweight)
    except ArgumentError as err:
        print_rank0(f"error: {err}")
        sys.exit(2)
    try:
        data = datasets_provider(args, tokenizer)
    except ArgumentError as err:
        print_rank0(f"error: {err}")
        sys.exit(2)
    state = checkpointing.LoopState(
        layout=dict(dp=args.data_parallel_size, tp=args.tensor_model_parallel_size,
                    pp=args.pipeline_model_parallel_size, cp=args.context_parallel_size),
        blend={"prefixes": list(data.blend[0]), "weights": data.blend[1]},
        reweight={"strategy": reweight.strategy, "delta": reweight.delta, **reweight.schedule.state_dict()},
    )
    if args.load:
        try:
            resume(args, model, optimizer, scheduler, state)
        except ArgumentError as err:  # every rank reads the same files, so every rank stops here
            print_rank0(f"error: {err}")
            sys.exit(2)
    if args.save and torch.distributed.get_rank() == 0:
        write_run_record(args.save, args, reweight, start_iteration=state.iteration)
    train(forward_step, model, optimizer, scheduler, data, args, state, reweight, health)
    shutdown()


def resolve_args(argv, family):
    """Flags -> (args, reweight config, health config, tokenizer); args None after ``--dry-run``."""
    args = parse_args(argv, family=family)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    validate_args(args, world_size)
    if args.dry_run:
        report = dry_run_report(args)  # first: a flag it refuses is the only output
        print(json.dumps(vars(args), indent=1, sort_keys=True, default=str))
        print(report)
        return None, None, None, None
    reweight = ReweightConfig.from_args(args)
    check_reweighting_supported(reweight, context_parallel_size=args.context_parallel_size,
                                calculate_per_token_loss=args.calculate_per_token_loss)
    health = WeightHealthConfig.from_args(args)
    tokenizer = build_tokenizer(args)
    if args.vocab_size is not None and tokenizer.vocab_size > args.vocab_size:
        raise ArgumentError(f"--tokenizer-model has {tokenizer.vocab_size} tokens, more than --vocab-size "
                            f"{args.vocab_size}; raise --vocab-size or drop it to take the tokenizer's")
    args.vocab_size = args.vocab_size or tokenizer.vocab_size
    validate_args(args, world_size)  # again, now that the vocabulary (and its padding) is known
    # Files are checked here, before any process group, so that a bad path is one line, not a hang.
    check_data_args(args)
    if args.load:
        checkpointing.check_load_dir(args.load, args.save)
    return args, reweight, health, tokenizer


def build_model_and_optimizer(model_provider, args):
    """This rank's model in megatron-core DDP, Adam via ``get_megatron_optimizer``, the LR schedule."""
    model = model_provider(args, pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage())
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    config = model.config
    if args.bf16 or args.fp16:
        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=args.bf16 or args.fp16,
                                               use_distributed_optimizer=args.use_distributed_optimizer,
                                               overlap_grad_reduce=args.overlap_grad_reduce,
                                               overlap_param_gather=args.overlap_param_gather,
                                               bucket_size=args.ddp_bucket_size)
    model = DistributedDataParallel(config, ddp_config, model)
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        clip_grad=args.clip_grad, bf16=args.bf16, fp16=args.fp16,
        use_distributed_optimizer=args.use_distributed_optimizer,
    ), [model])
    # Megatron-LM counts schedule steps in samples, so a changed global batch keeps the LR curve.
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


def resume(args, model, optimizer, scheduler, state) -> None:
    """Load the latest checkpoint of ``--load`` into everything, or start fresh when there is none."""
    loaded = checkpointing.load_checkpoint(args.load, model, optimizer, load_optim=not args.no_load_optim,
                                           load_rng=not args.no_load_rng)
    if loaded is None:
        print_rank0(f"--load {args.load}: no checkpoint there yet, starting from iteration 0")
        return
    check_resume(loaded, state, override_blend=args.override_data_blend)
    if not args.no_load_optim:
        scheduler.load_state_dict(loaded.scheduler)
    if loaded.reweight != state.reweight:
        print_rank0(f"note: reweighting changed at resume: checkpoint {loaded.reweight}, now {state.reweight}")
    state.iteration, state.consumed_samples = loaded.iteration, loaded.consumed_samples
    state.skipped_iterations = loaded.skipped_iterations
    per_dataset = ", ".join(f"{name} {n}" for name, n in loaded.consumed_per_dataset.items())
    print_rank0(f"resumed from {args.load} at iteration {state.iteration} ({state.consumed_samples} samples "
                f"consumed{': ' + per_dataset if per_dataset else ''})")


def optimizer_step(optimizer, clip_grad: float) -> tuple[bool, float | None]:
    """Clip and apply the gradients unless they are unusable; returns ``(updated, grad_norm)``.

    megatron-core's ``step()`` skips only an fp16 loss-scale overflow; in bf16/fp32 it would apply
    NaN gradients (clipping does not catch a NaN norm). Here the update is also skipped, weights
    and Adam moments untouched, when the global gradient norm is not finite (a NaN/Inf loss
    reached the gradients) or exactly 0 (no sample of the step had a finite loss: the reweighted
    loss gives such samples weight 0). The norm is the same on every rank, so all ranks agree.
    """
    if optimizer.prepare_grads():  # fp16 overflow; the grad scaler has already backed off
        return False, None
    grad_norm = optimizer.get_grad_norm()
    if not math.isfinite(grad_norm) or grad_norm == 0.0:
        return False, grad_norm
    if clip_grad > 0:
        for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
            params = sub.get_parameters()
            if params:
                clip_grad_by_total_norm_fp32(params, max_norm=clip_grad, total_norm=grad_norm)
    return optimizer.step_with_ready_grads(), grad_norm


def train_step(forward_step, data_iter, model, optimizer, scheduler, step: StepInfo, args):
    """Forward and backward over the step's micro-batches, then the update; returns (reports, updated, norm)."""
    model.zero_grad_buffer()
    optimizer.zero_grad()
    reports = get_forward_backward_func()(
        forward_step_func=lambda iterator, chunk: forward_step(iterator, chunk, step),
        data_iterator=data_iter, model=[model], num_microbatches=args.num_microbatches,
        seq_length=args.seq_length, micro_batch_size=args.micro_batch_size, forward_only=False)
    updated, grad_norm = optimizer_step(optimizer, args.clip_grad)
    if updated:
        scheduler.step(increment=args.global_batch_size)
    return reports, updated, grad_norm


@dataclasses.dataclass
class Interval:
    """What a log interval accumulates between two console lines."""

    reports: ReportAccumulator = dataclasses.field(default_factory=ReportAccumulator)
    steps: int = 0
    seconds: float = 0.0  # training steps only: evaluation and checkpoints are not counted
    skipped: int = 0
    nan_iterations: int = 0
    grad_norm: float | None = None


def train(forward_step, model, optimizer, scheduler, data, args, state, reweight, health_config) -> None:
    """The loop: steps, logging, evaluation, checkpoints, exits."""
    dp_group = ps.get_data_parallel_group()
    logging_rank = is_logging_rank()
    sink = MetricsSink(metrics_file=args.metrics_file if logging_rank else None,
                       tensorboard_dir=args.tensorboard_dir if logging_rank else None,
                       wandb_project=args.wandb_project if logging_rank else None,
                       wandb_name=args.wandb_exp_name, run_config=vars(args))
    health = WeightHealth(health_config)
    exits = ExitConditions(signal_handler=args.exit_signal_handler, duration_in_mins=args.exit_duration_in_mins,
                           interval=args.exit_interval)
    data_iter = batch_iterator(data.train, consumed_samples=state.consumed_samples,
                               micro_batch_size=args.micro_batch_size, dp_rank=ps.get_data_parallel_rank(),
                               dp_size=args.data_parallel_size, num_workers=args.num_workers)
    interval, last_group = Interval(), {}
    model.train()
    while state.iteration < args.train_iters:
        step = StepInfo(state.iteration, reweight, dp_group, num_domains=len(data.domains),
                        on_group=lambda losses, ids: last_group.update(losses=losses, ids=ids))
        started = time.perf_counter()
        reports, updated, grad_norm = train_step(forward_step, data_iter, model, optimizer, scheduler, step, args)
        interval.seconds += time.perf_counter() - started
        state.iteration += 1
        state.consumed_samples += args.global_batch_size
        state.skipped_iterations += not updated
        interval.reports.add(reports)
        interval.steps += 1
        interval.skipped += not updated
        interval.nan_iterations += grad_norm is not None and not math.isfinite(grad_norm)
        interval.grad_norm = grad_norm

        if state.iteration % args.log_interval == 0:
            log_interval(interval, scheduler, optimizer, data, args, state, reweight, sink, health, last_group)
            interval = Interval()
        last = state.iteration == args.train_iters
        if data.valid and args.eval_iters > 0 and (state.iteration % args.eval_interval == 0 or last):
            with parameters_gathered(model):
                log_validation(evaluate(forward_step, model, data.valid, args, state), args, state, sink)
        stop = exits.reason(state.iteration)
        save_due = args.save_interval and state.iteration % args.save_interval == 0
        if args.save and (save_due or stop or last):
            state.scheduler = scheduler.state_dict()
            state.consumed_per_dataset = consumed_per_dataset(data.train, state.consumed_samples, data.domains)
            with parameters_gathered(model):
                checkpointing.save_checkpoint(args.save, model, optimizer, state, log=print_rank0)
        if stop:
            print_rank0(f"exiting after iteration {state.iteration}: {stop}")
            break
    sink.close()


@contextlib.contextmanager
def parameters_gathered(model):
    """Every rank's model holds the updated parameters inside the block.

    With ``--overlap-param-gather`` the distributed optimizer updates only this rank's shard and
    the other shards arrive during the next forward pass (forward pre-hooks). Evaluation and
    checkpoints need them now: as Megatron-LM does, the hooks are removed with a synchronous
    gather and put back afterwards. Without that option this does nothing.
    """
    if not getattr(model, "use_forward_hook", False):
        yield
        return
    model.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        model.enable_forward_pre_hook()


def log_interval(interval, scheduler, optimizer, data, args, state, reweight, sink, health, last_group) -> None:
    """Reduce the interval's reports over DP (the one host sync), print the line, write the record."""
    pairs = interval.reports.pop(ps.get_data_parallel_group()) if ps.is_pipeline_last_stage() else {}
    if not is_logging_rank():
        return
    record = {
        "kind": "train", "iteration": state.iteration, "consumed_samples": state.consumed_samples,
        "tokens": state.consumed_samples * args.seq_length, "global_batch_size": args.global_batch_size,
        "lr": scheduler.get_lr(optimizer.param_groups[0]), "grad_norm": interval.grad_norm,
        "ms_per_iter": 1000 * interval.seconds / interval.steps,
        "tokens_per_s": interval.steps * args.global_batch_size * args.seq_length / interval.seconds,
        "skipped": interval.skipped, "nan_iterations": interval.nan_iterations,
        **summarise_train(pairs, data.domains),
    }
    warning = health.check(record)
    print(console_line(record, args.train_iters), flush=True)
    if warning:
        print(warning, flush=True)
    sink.write(record)
    if "losses" in last_group:
        ids = last_group["ids"]
        sink.write({"kind": "group", "iteration": state.iteration, "strategy": reweight.strategy,
                    "r": reweight.r_at(state.iteration - 1), "delta": reweight.delta,
                    "losses": last_group["losses"].tolist(), "domain_ids": ids.tolist() if ids is not None else None})


def evaluate(forward_step, model, valid: dict, args, state) -> dict:
    """Unweighted loss and perplexity per validation set: the same first ``eval_iters`` batches each time."""
    model.eval()
    step = StepInfo(state.iteration, ReweightConfig(), ps.get_data_parallel_group(), num_domains=0)
    results = {}
    for name, dataset in valid.items():
        batches = batch_iterator(dataset, consumed_samples=0, micro_batch_size=args.micro_batch_size,
                                 dp_rank=ps.get_data_parallel_rank(), dp_size=args.data_parallel_size, wrap=True)
        reports = ReportAccumulator()
        with torch.no_grad():
            for _ in range(args.eval_iters):
                reports.add(get_forward_backward_func()(
                    forward_step_func=lambda iterator, chunk: forward_step(iterator, chunk, step),
                    data_iterator=batches, model=[model], num_microbatches=args.num_microbatches,
                    seq_length=args.seq_length, micro_batch_size=args.micro_batch_size, forward_only=True))
        if ps.is_pipeline_last_stage():
            total, count = reports.pop(ps.get_data_parallel_group())["lm loss"]
            loss = total / max(count, 1)
            results[name] = {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
    model.train()
    return results


def log_validation(results: dict, args, state, sink) -> None:
    """Print and record per-domain validation loss and perplexity (their mean over domains too)."""
    if not results or not is_logging_rank():
        return
    mean = sum(r["loss"] for r in results.values()) / len(results)
    record = {"kind": "valid", "iteration": state.iteration, "tokens": state.consumed_samples * args.seq_length,
              "loss": mean, "ppl": math.exp(min(mean, 50.0)), "domains": results}
    print(validation_line(record), flush=True)
    sink.write(record)
