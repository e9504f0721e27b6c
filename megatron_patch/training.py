"""``pretrain(...)``: our training loop on megatron-core parts, shaped like Megatron-LM's.

The entry points hand over a datasets provider, a model provider and a forward step; the loop
resolves the flags into one frozen :class:`~megatron_patch.config.RunConfig`, builds megatron-core's
DDP model, optimizer and LR schedule, runs ``get_forward_backward_func()`` for each step, and does
the bookkeeping: logging, evaluation, checkpoints, exits. Reweighting is not visible here: the
loop builds one :class:`~megatron_patch.loss.SampleLoss`, tells it each step's iteration, and hands
it to the forward step, whose ``loss_func`` carries the weights and returns the report.
"""

import contextlib
import dataclasses
import functools
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
from .arguments import no_effect_flags_given, resolve_config
from .config import RunConfig
from .data import DataSetup, batch_iterator, check_data_args, consumed_per_dataset
from .distributed import initialize_distributed, is_logging_rank, print_rank0, rng_state, set_rng_state, shutdown
from .errors import ArgumentError
from .estimate import dry_run_report
from .exits import ExitConditions
from .health import WeightHealth
from .logging_utils import MetricsSink, ReportAccumulator, console_line, summarise_train, validation_line
from .loss import GROUP_DOMAINS, GROUP_LOSSES, ReweightConfig, SampleLoss
from .model import check_per_token_loss_path


def pretrain(datasets_provider, model_provider, forward_step, *, family: str, argv=None) -> None:
    """Resolve the flags, build everything, train; the one call an entry point makes.

    Args:
        datasets_provider: ``(config, tokenizer) -> DataSetup`` (see :mod:`megatron_patch.data`).
        model_provider: ``(config, pre_process, post_process) -> GPTModel`` for this rank's stage.
        forward_step: ``(data_iterator, model, *, loss: SampleLoss) -> (output_tensor, loss_func)``;
            the loop binds ``loss``, which leaves Megatron-LM's ``forward_step(data_iterator, model)``.
        family: ``llama`` or ``gpt`` (the defaults of the layout).
        argv: the flags; ``sys.argv[1:]`` when None.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config, tokenizer = resolve_config(argv, family=family, world_size=int(os.environ.get("WORLD_SIZE", 1)))
        megatron_lm_loop = config.training.trainer == "megatron-lm"
        if megatron_lm_loop:
            from . import megatron_lm

            megatron_lm.check_supported(config, argv)  # refuses --dry-run among what only our loop does
        if config.logging.dry_run:
            report = dry_run_report(config)  # first: a setting it refuses is the only output
            print(json.dumps(config.as_dict(), indent=1, sort_keys=True, default=str))
            print(report)
            return
        # Files are checked here, before any process group, so that a bad path is one line, not a hang.
        check_data_args(config.data)
        if config.checkpoint.load:
            check_load_dir = megatron_lm.check_load_dir if megatron_lm_loop else checkpointing.check_load_dir
            check_load_dir(config.checkpoint.load, config.checkpoint.save)
    except ArgumentError as err:
        refuse(err, rank=int(os.environ.get("RANK", 0)))  # every process finds it: one copy of the line
    if megatron_lm_loop:
        megatron_lm.pretrain(config, tokenizer, datasets_provider, model_provider, forward_step)
        return
    initialize_distributed(config.parallel, seed=config.training.seed)
    for flag in no_effect_flags_given(argv, config):
        print_rank0(f"note: {flag} has no effect here (see docs/flags.md)")
    try:
        run = build_run(config, model_provider, datasets_provider, tokenizer)
        if config.checkpoint.load:
            checkpointing.resume(config, run.model, run.optimizer, run.scheduler, run.state)
    except ArgumentError as err:  # every rank reads the same files and flags, so every rank stops here
        refuse(err, rank=torch.distributed.get_rank())
    if config.checkpoint.save and torch.distributed.get_rank() == 0:
        checkpointing.write_run_record(config.checkpoint.save, config, start_iteration=run.state.iteration)
    train(run, forward_step)
    shutdown()


def refuse(err: ArgumentError, *, rank: int) -> None:
    """Print ``error: ...`` once (rank 0) and exit with status 2."""
    if rank == 0:
        print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(2)


@dataclasses.dataclass
class Run:
    """What the loop works on: built once by :func:`build_run`."""

    config: RunConfig
    model: DistributedDataParallel
    optimizer: object
    scheduler: OptimizerParamScheduler
    data: DataSetup
    state: checkpointing.LoopState
    loss: SampleLoss


def build_run(config: RunConfig, model_provider, datasets_provider, tokenizer) -> Run:
    """Model, optimizer, schedule, data, loop state and the loss boundary of this rank."""
    model, optimizer, scheduler = build_model_and_optimizer(model_provider, config)
    # Reweighting needs per-token losses: refuse any loss path that would silently not give them.
    check_per_token_loss_path(model, config.reweight)
    data = datasets_provider(config, tokenizer)
    parallel = config.parallel
    state = checkpointing.LoopState(
        layout=dict(dp=parallel.data_parallel_size, tp=parallel.tensor_model_parallel_size,
                    pp=parallel.pipeline_model_parallel_size, cp=parallel.context_parallel_size),
        blend={"prefixes": list(data.blend[0]), "weights": data.blend[1]},
        reweight=config.reweight.state_dict(),
    )
    loss = SampleLoss(config.reweight, ps.get_data_parallel_group(), num_domains=len(data.domains),
                      cp_group=ps.get_context_parallel_group())
    return Run(config, model, optimizer, scheduler, data, state, loss)


def build_model_and_optimizer(model_provider, config: RunConfig):
    """This rank's model in megatron-core DDP, Adam via ``get_megatron_optimizer``, the LR schedule."""
    parallel, training = config.parallel, config.training
    model = model_provider(config, pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage())
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    model_config = model.config
    if training.bf16 or training.fp16:
        model = Float16Module(model_config, model)
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=training.bf16 or training.fp16,
                                               use_distributed_optimizer=parallel.use_distributed_optimizer,
                                               overlap_grad_reduce=parallel.overlap_grad_reduce,
                                               overlap_param_gather=parallel.overlap_param_gather,
                                               bucket_size=parallel.ddp_bucket_size)
    model = DistributedDataParallel(model_config, ddp_config, model)
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=training.lr, min_lr=training.min_lr, weight_decay=training.weight_decay,
        adam_beta1=training.adam_beta1, adam_beta2=training.adam_beta2, adam_eps=training.adam_eps,
        clip_grad=training.clip_grad, bf16=training.bf16, fp16=training.fp16,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    ), [model])
    # Megatron-LM counts schedule steps in samples, so a changed global batch keeps the LR curve.
    samples = training.global_batch_size
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if training.lr_warmup_iters else training.lr, max_lr=training.lr,
        min_lr=training.min_lr, lr_warmup_steps=training.lr_warmup_iters * samples,
        lr_decay_steps=training.lr_decay_iters * samples, lr_decay_style=training.lr_decay_style,
        start_wd=training.weight_decay, end_wd=training.weight_decay,
        wd_incr_steps=training.train_iters * samples, wd_incr_style="constant",
    )
    # The schedule calls these to finish gradients (DP all-reduce, embedding ties) and scale losses.
    model_config.finalize_model_grads_func = finalize_model_grads
    model_config.grad_scale_func = optimizer.scale_loss
    model_config.no_sync_func = model.no_sync
    return model, optimizer, scheduler


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


def forward_backward(run: Run, forward_step, data_iterator, loss: SampleLoss, *, forward_only: bool) -> list[dict]:
    """One step's micro-batches through megatron-core's schedule; the reports of the last stage."""
    training = run.config.training
    return get_forward_backward_func()(
        forward_step_func=functools.partial(forward_step, loss=loss), data_iterator=data_iterator,
        model=[run.model], num_microbatches=training.num_microbatches, seq_length=run.config.model.seq_length,
        micro_batch_size=training.micro_batch_size, forward_only=forward_only)


def train_step(run: Run, forward_step, data_iterator):
    """Forward and backward over the step's micro-batches, then the update; returns (reports, updated, norm)."""
    run.model.zero_grad_buffer()
    run.optimizer.zero_grad()
    run.loss.start_step(run.state.iteration)
    if run.loss.needs_first_pass:
        data_iterator = weigh_global_batch(run, forward_step, data_iterator)
    reports = forward_backward(run, forward_step, data_iterator, run.loss, forward_only=False)
    updated, grad_norm = optimizer_step(run.optimizer, run.config.training.clip_grad)
    if updated:
        run.scheduler.step(increment=run.config.training.global_batch_size)
    return reports, updated, grad_norm


def weigh_global_batch(run: Run, forward_step, data_iterator):
    """``--reweight-group global-batch``: weigh every sample of the step before training on it.

    A forward-only pass over the step's micro-batches (no activations kept) records each
    sample's loss; the loss boundary gathers them over DP and computes the step's weights, which
    the normal forward-backward then applies. The random states are restored after the first
    pass, so dropout draws the same masks in both passes: the weights are those of the very
    losses the backward trains on. Returns an iterator over the same micro-batches.
    """
    batches = [next(data_iterator) for _ in range(run.config.training.num_microbatches)]
    before = rng_state()
    with torch.no_grad(), run.loss.first_pass():
        forward_backward(run, forward_step, iter(batches), run.loss, forward_only=True)
    set_rng_state(before)
    run.loss.weigh_step()
    return iter(batches)


@dataclasses.dataclass
class Interval:
    """What a log interval accumulates between two console lines."""

    reports: ReportAccumulator = dataclasses.field(default_factory=ReportAccumulator)
    steps: int = 0
    seconds: float = 0.0  # training steps only: evaluation and checkpoints are not counted
    skipped: int = 0
    nan_iterations: int = 0
    grad_norm: float | None = None
    group: dict = dataclasses.field(default_factory=dict)  # the last step's last group (report entries)

    def add(self, reports: list[dict], updated: bool, grad_norm: float | None, seconds: float) -> None:
        self.reports.add(reports)
        self.group = {k: v for k, v in (reports[-1] if reports else {}).items() if k in (GROUP_LOSSES, GROUP_DOMAINS)}
        self.steps += 1
        self.seconds += seconds
        self.skipped += not updated
        self.nan_iterations += grad_norm is not None and not math.isfinite(grad_norm)
        self.grad_norm = grad_norm


def train(run: Run, forward_step) -> None:
    """The loop: steps, logging, evaluation, checkpoints, exits."""
    config, state = run.config, run.state
    training, logging, ckpt = config.training, config.logging, config.checkpoint
    logging_rank = is_logging_rank()
    sink = MetricsSink(metrics_file=logging.metrics_file if logging_rank else None,
                       tensorboard_dir=logging.tensorboard_dir if logging_rank else None,
                       wandb_project=logging.wandb_project if logging_rank else None,
                       wandb_name=logging.wandb_exp_name, run_config=config.as_dict())
    health = WeightHealth(config.health)
    exits = ExitConditions(signal_handler=training.exit_signal_handler,
                           duration_in_mins=training.exit_duration_in_mins, interval=training.exit_interval)
    data_iter = batch_iterator(run.data.train, consumed_samples=state.consumed_samples,
                               micro_batch_size=training.micro_batch_size, dp_rank=ps.get_data_parallel_rank(),
                               dp_size=config.parallel.data_parallel_size, num_workers=config.data.num_workers)
    interval = Interval()
    run.model.train()
    while state.iteration < training.train_iters:
        started = time.perf_counter()
        reports, updated, grad_norm = train_step(run, forward_step, data_iter)
        interval.add(reports, updated, grad_norm, time.perf_counter() - started)
        state.iteration += 1
        state.consumed_samples += training.global_batch_size
        state.skipped_iterations += not updated

        if state.iteration % logging.log_interval == 0:
            log_interval(run, interval, sink, health)
            interval = Interval()
        last = state.iteration == training.train_iters
        if run.data.valid and logging.eval_iters > 0 and (state.iteration % logging.eval_interval == 0 or last):
            with parameters_gathered(run.model):
                log_validation(run, evaluate(run, forward_step), sink)
        stop = exits.reason(state.iteration)
        save_due = ckpt.save_interval and state.iteration % ckpt.save_interval == 0
        if ckpt.save and (save_due or stop or last):
            state.scheduler = run.scheduler.state_dict()
            state.consumed_per_dataset = consumed_per_dataset(run.data.train, state.consumed_samples, run.data.domains)
            with parameters_gathered(run.model):
                checkpointing.save_checkpoint(ckpt.save, run.model, run.optimizer, state, log=print_rank0)
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


def log_interval(run: Run, interval: Interval, sink: MetricsSink, health: WeightHealth) -> None:
    """Reduce the interval's reports over DP (the one host sync), print the line, write the records."""
    # Over DP x CP, as Megatron-LM reduces its report: CP ranks hold parts of the same samples.
    reduce_group = ps.get_data_parallel_group(with_context_parallel=True)
    pairs = interval.reports.pop(reduce_group) if ps.is_pipeline_last_stage() else {}
    if not is_logging_rank():
        return
    config, state = run.config, run.state
    batch, seq = config.training.global_batch_size, config.model.seq_length
    record = {
        "kind": "train", "iteration": state.iteration, "consumed_samples": state.consumed_samples,
        "tokens": state.consumed_samples * seq, "global_batch_size": batch,
        "lr": run.scheduler.get_lr(run.optimizer.param_groups[0]), "grad_norm": interval.grad_norm,
        "ms_per_iter": 1000 * interval.seconds / interval.steps,
        "tokens_per_s": interval.steps * batch * seq / interval.seconds,
        "skipped": interval.skipped, "nan_iterations": interval.nan_iterations,
        **summarise_train(pairs, run.data.domains),
    }
    if config.reweight.reweighting:
        record["group_size"] = config.reweight.group_size(config.training.micro_batch_size,
                                                          config.parallel.data_parallel_size,
                                                          config.training.num_microbatches)
    warning = health.check(record)
    print(console_line(record, config.training.train_iters), flush=True)
    if warning:
        print(warning, flush=True)
    sink.write(record)
    if GROUP_LOSSES in interval.group:
        ids = interval.group.get(GROUP_DOMAINS)
        reweight = config.reweight
        sink.write({"kind": "group", "iteration": state.iteration, "strategy": reweight.strategy,
                    "r": reweight.r_at(state.iteration - 1), "delta": reweight.delta,
                    "losses": interval.group[GROUP_LOSSES].tolist(),
                    "domain_ids": ids.tolist() if ids is not None else None})


def evaluate(run: Run, forward_step) -> dict:
    """Unweighted loss and perplexity per validation set: the same first ``eval_iters`` batches each time."""
    config = run.config
    run.model.eval()
    plain = SampleLoss(ReweightConfig(), ps.get_data_parallel_group())
    results = {}
    for name, dataset in run.data.valid.items():
        batches = batch_iterator(dataset, consumed_samples=0, micro_batch_size=config.training.micro_batch_size,
                                 dp_rank=ps.get_data_parallel_rank(), dp_size=config.parallel.data_parallel_size,
                                 wrap=True)
        reports = ReportAccumulator()
        with torch.no_grad():
            for _ in range(config.logging.eval_iters):
                reports.add(forward_backward(run, forward_step, batches, plain, forward_only=True))
        if ps.is_pipeline_last_stage():
            total, count = reports.pop(ps.get_data_parallel_group(with_context_parallel=True))["lm loss"]
            loss = total / max(count, 1)
            results[name] = {"loss": loss, "ppl": math.exp(min(loss, 50.0))}
    run.model.train()
    return results


def log_validation(run: Run, results: dict, sink: MetricsSink) -> None:
    """Print and record per-domain validation loss and perplexity (their mean over domains too)."""
    if not results or not is_logging_rank():
        return
    mean = sum(r["loss"] for r in results.values()) / len(results)
    record = {"kind": "valid", "iteration": run.state.iteration,
              "tokens": run.state.consumed_samples * run.config.model.seq_length,
              "loss": mean, "ppl": math.exp(min(mean, 50.0)), "domains": results}
    print(validation_line(record), flush=True)
    sink.write(record)
