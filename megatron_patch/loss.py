"""The loss boundary: the reweighted ``loss_func`` for megatron-core's schedules, and its config.

A Megatron forward step returns ``(output_tensor, loss_func)``; the schedule calls
``loss_func(output_tensor)`` once per micro-batch on the last pipeline stage, where
``output_tensor`` is GPTModel's per-token loss ``[b, s]`` (already reduced over tensor
parallelism). The loop builds one :class:`SampleLoss` per run (config, data-parallel group,
domains), tells it each step's iteration (for r), and the forward step asks it for the
micro-batch's ``loss_func``: :func:`reweighted_loss` with everything bound but the output.

The reweighting group is one micro-batch across the data-parallel (DP) group: the detached
per-sample losses of the ``dp_size * b`` samples are all-gathered over the DP group (one
collective), every rank computes the same weights with :func:`reweighting.sample_weights`, and
keeps its own slice by its rank in the DP group. The returned loss is scaled so that after the
schedule's division by ``num_tokens`` and by the number of micro-batches, and DDP's gradient
average over DP, the gradient is that of ``sum_{i in group} w_i * l_i`` (averaged over
micro-batches). With several micro-batches per step each is its own group, so the group size is
``micro_batch_size * dp_size``, not the global batch.

The ``uniform`` strategy, and a ``uniform`` warm-up (``r = inf``), return the stock Megatron loss
``(sum of masked token losses, token count)`` bit for bit, with no collective.
"""

import contextlib
import dataclasses
import functools
import math
from typing import ClassVar

import torch

from reweighting import STRATEGIES, WARMUP_MODES, TemperatureSchedule, check_delta, check_strategy, weight_stats

from .config import add_flags, check_ranges, flag
from .errors import ArgumentError
from .groups import GroupWeights, cp_sample_loss, dp_sample_weights

GROUPS = ("micro-batch", "global-batch")

# Report keys of the gathered group (device tensors [N], not [sum, count] pairs): the loop keeps
# the last micro-batch's for the metrics file's "group" record instead of summing them.
GROUP_LOSSES, GROUP_DOMAINS = "group losses", "group domain_ids"


@dataclasses.dataclass(frozen=True)
class ReweightConfig:
    """How the loss is reweighted: the strategy, its delta, and the temperature schedule."""

    FLAG_PREFIX: ClassVar[str] = "reweight-"

    strategy: str = flag("uniform", "reweighting strategy: uniform (plain training), linupper (the paper's), "
                                    "quadratic, extremes", choices=STRATEGIES)
    r: float = flag(1.0, "the temperature after warm-up and ramp (smaller reweights harder)", above=0)
    delta: float = flag(1.0, "half-width of the min-max normalised loss range [-delta, delta]", above=0)
    warmup_iters: int = flag(0, "iterations [0, warmup_iters) are the warm-up", minimum=0)
    warmup_mode: str = flag("uniform", "uniform: no reweighting during warm-up; large-r: reweight with "
                                       "--reweight-warmup-r", choices=WARMUP_MODES)
    warmup_r: float = flag(100.0, "the temperature of a large-r warm-up, and the start of the ramp", above=0)
    ramp_iters: int = flag(0, "after warm-up, r moves linearly from --reweight-warmup-r to --reweight-r over "
                              "this many iterations", minimum=0)
    group: str = flag("micro-batch", "the samples one softmax weighs: micro-batch (micro batch x DP, one group per "
                                     "micro-batch) or global-batch (every sample of the step; a forward-only first "
                                     "pass gathers their losses)", choices=GROUPS)

    def __post_init__(self):
        check_ranges(self)
        check_strategy(self.strategy)
        check_delta(self.delta)
        for name, value in (("--reweight-r", self.r), ("--reweight-warmup-r", self.warmup_r)):
            if not math.isfinite(value):
                raise ArgumentError(f"{name} {value}: must be a finite temperature > 0")

    @functools.cached_property
    def schedule(self) -> TemperatureSchedule:
        """The temperature r as a function of the iteration (warm-up, ramp, target)."""
        return TemperatureSchedule(target_r=self.r, warmup_iters=self.warmup_iters, warmup_mode=self.warmup_mode,
                                   warmup_r=self.warmup_r, ramp_iters=self.ramp_iters)

    @property
    def reweighting(self) -> bool:
        """Whether any iteration reweights (False for the ``uniform`` strategy)."""
        return self.strategy != "uniform"

    def r_at(self, iteration: int) -> float:
        """The temperature in effect at ``iteration``; ``math.inf`` means plain (stock) training."""
        return self.schedule.r_at(iteration) if self.reweighting else math.inf

    def state_dict(self) -> dict:
        """What checkpoints and the run record keep: strategy, delta, group and the schedule's fields."""
        return {"strategy": self.strategy, "delta": self.delta, "group": self.group, **self.schedule.state_dict()}

    def group_size(self, micro_batch_size: int, dp_size: int, num_microbatches: int) -> int:
        """How many samples one softmax weighs."""
        return micro_batch_size * dp_size * (num_microbatches if self.group == "global-batch" else 1)


class SampleLoss:
    """The loss boundary of a run: built once by the loop, one ``loss_func`` per micro-batch.

    With ``--reweight-group global-batch`` a step has two passes over its micro-batches: during
    :meth:`first_pass` each ``loss_func`` only records its samples' losses, :meth:`weigh_step`
    gathers them over DP and computes the step's weights, and the second pass's ``loss_func`` s
    apply them, micro-batch by micro-batch in the schedule's order.

    Args:
        config: the reweighting configuration.
        dp_group: the data-parallel process group the group's losses are gathered over.
        num_domains: the number of domains of the training blend (per-domain report entries
            when there are several).
        cp_group: the context-parallel group, whose ranks hold parts of the same samples.
        report_group: put the gathered group (``group losses`` [N], ``group domain_ids`` [N])
            in the report for the metrics file; off for a loop that expects pairs only.
    """

    def __init__(self, config: ReweightConfig, dp_group, num_domains: int = 0, *, cp_group=None,
                 report_group: bool = True):
        self.config = config
        self.dp_group = dp_group
        self.cp_group = cp_group
        self.num_domains = num_domains if num_domains > 1 else 0
        self.report_group = report_group
        self.iteration = 0
        self._collecting = False
        self._collected: list[tuple] = []  # first pass: (losses [b], domain ids [b] or None) per micro-batch
        self._pending: list[GroupWeights] = []  # second pass: the step's weights, one entry per micro-batch

    def start_step(self, iteration: int) -> None:
        """The loop's word: the next micro-batches belong to ``iteration`` (it sets r)."""
        self.iteration = iteration
        self._collected, self._pending = [], []

    @property
    def needs_first_pass(self) -> bool:
        """Whether this step's weights span the global batch (``global-batch`` and reweighting now)."""
        return self.config.group == "global-batch" and math.isfinite(self.config.r_at(self.iteration))

    @contextlib.contextmanager
    def first_pass(self):
        """Inside the block ``loss_func`` s record their samples' losses instead of training."""
        self._collecting = True
        try:
            yield
        finally:
            self._collecting = False

    def weigh_step(self) -> None:
        """Gather the first pass's losses over DP and weigh every sample of the step at once."""
        if not self._collected:  # not the last pipeline stage: no losses here
            return
        losses = torch.cat([c[0] for c in self._collected])  # [M*b]
        ids = torch.cat([c[1] for c in self._collected]) if self._collected[0][1] is not None else None
        group = dp_sample_weights(losses, strategy=self.config.strategy, r=self.config.r_at(self.iteration),
                                  delta=self.config.delta, dp_group=self.dp_group, domain_ids=ids)
        scale = len(self._collected)
        # One group for the whole step: its statistics once, not once per micro-batch.
        group.stats = weight_stats(group.weights, group.losses, group.domain_ids, self.num_domains)
        self._pending = [dataclasses.replace(group, local=chunk, scale=scale)
                         for chunk in group.local.split(self._collected[0][0].shape[0])]
        self._collected = []

    def loss_func(self, loss_mask: torch.Tensor, domain_ids: torch.Tensor | None = None):
        """The ``loss_func(output_tensor) -> (loss, num_tokens, report)`` of one micro-batch.

        Args:
            loss_mask: [b, s] 1 for tokens that count.
            domain_ids: optional [b] domain of each sample (``BlendedDataset``'s dataset id).
        """
        domain_ids = domain_ids if self.num_domains else None
        if self.needs_first_pass and not (self._collecting or self._pending):
            return _without_first_pass  # raises if the schedule calls it (it does on the last stage only)
        if self._collecting:
            return functools.partial(_record_losses, loss_mask, domain_ids=domain_ids, cp_group=self.cp_group,
                                     into=self._collected)
        return functools.partial(
            reweighted_loss, loss_mask, strategy=self.config.strategy, r=self.config.r_at(self.iteration),
            delta=self.config.delta, dp_group=self.dp_group, cp_group=self.cp_group,
            domain_ids=domain_ids, num_domains=self.num_domains, report_group=self.report_group,
            group=self._pending.pop(0) if self._pending else None,
        )


def add_reweight_args(parser):
    """The ``--reweight-*`` flag group on ``parser`` (Megatron-LM's ``extra_args_provider``); returns it.

    Read it back with ``build_section(ReweightConfig, args)`` (:mod:`megatron_patch.config`).
    """
    add_flags(parser, ReweightConfig, "reweighting", "online loss-based per-sample reweighting (Sow et al.)")
    return parser


def check_reweighting_supported(config: ReweightConfig, *, calculate_per_token_loss: bool = False) -> None:
    """Refuse, at start-up, parallel settings under which the reweighted loss would be wrong.

    Raises :class:`ArgumentError` naming the flag and what to do. Nothing is refused for ``uniform``.
    """
    if not config.reweighting:
        return
    if calculate_per_token_loss:
        raise ArgumentError(
            f"--calculate-per-token-loss is not supported with --reweight-strategy {config.strategy} "
            "(weights are per sample, the loss is a weighted mean of per-sample means); drop the flag"
        )


def _without_first_pass(output_tensor):
    """Never fall back to per-micro-batch groups silently (a loop that skipped the first pass)."""
    raise RuntimeError("--reweight-group global-batch: no weights for this micro-batch; the loop must run "
                       "SampleLoss.first_pass() and weigh_step() before the step's forward-backward")


def _record_losses(loss_mask, output_tensor, *, domain_ids, cp_group, into: list):
    """First-pass ``loss_func`` of ``global-batch``: keep the samples' losses, train nothing."""
    _, losses, counts = cp_sample_loss(output_tensor, loss_mask, cp_group)
    into.append((losses, domain_ids))
    return torch.zeros((), device=output_tensor.device), counts.sum().to(torch.int), {}


def _stock_loss(token_loss, loss_mask):
    """Megatron's masked-sum loss and token count, the exact ops of the baseline."""
    mask = loss_mask.view(-1).float()
    loss = torch.sum(token_loss.view(-1).float() * mask)
    return loss, mask.sum().to(torch.int)


def _pair(value, count, device) -> torch.Tensor:
    """A report entry ``tensor([sum, count])``: float32 on ``device``, detached."""
    parts = [torch.as_tensor(x, dtype=torch.float32, device=device).reshape(()) for x in (value, count)]
    return torch.stack(parts).detach()


def _domain_report(losses, counts, domain_ids, num_domains) -> dict[str, torch.Tensor]:
    """Per-domain unweighted token-mean loss and token share of this rank's samples ([b] each)."""
    ids = domain_ids.long()
    sums = torch.where(counts > 0, losses * counts, 0.0)  # [b] masked token-loss sums
    dom_sum = sums.new_zeros(num_domains).index_add(0, ids, sums)
    dom_count = counts.new_zeros(num_domains).index_add(0, ids, counts)
    total = counts.sum()
    # Rows of two [D, 2] blocks: a few ops instead of several per domain.
    loss_pairs = torch.stack([dom_sum, dom_count], dim=1).detach().float()
    share_pairs = torch.stack([dom_count, total.expand(num_domains)], dim=1).detach().float()
    report = {}
    for d, (loss_pair, share_pair) in enumerate(zip(loss_pairs.unbind(0), share_pairs.unbind(0))):
        report[f"domain {d} loss"] = loss_pair
        report[f"domain {d} token_share"] = share_pair
    return report


def reweighted_loss(
    loss_mask: torch.Tensor,
    output_tensor: torch.Tensor,
    *,
    strategy: str,
    r: float,
    delta: float = 1.0,
    dp_group,
    cp_group=None,
    domain_ids: torch.Tensor | None = None,
    num_domains: int = 0,
    report_group: bool = True,
    group: GroupWeights | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """megatron-core ``loss_func``: ``(loss, num_tokens, report)`` for one micro-batch.

    Args:
        loss_mask: [b, s] (or [b*s]) 1 for tokens that count.
        output_tensor: [b, s] per-token losses (GPTModel's output when labels are given); with
            context parallelism this rank's part of each sample's tokens.
        strategy: a :data:`reweighting.STRATEGIES` name.
        r: the temperature in effect (``config.r_at(iteration)``); ``inf`` = plain training.
        delta: half-width of the normalised loss range.
        dp_group: the data-parallel process group (``parallel_state.get_data_parallel_group()``).
        cp_group: the context-parallel group (None or size 1: whole samples on every rank).
        domain_ids: optional [b] integer domain of each sample (``BlendedDataset``'s dataset id).
        num_domains: the number of domains; needed with ``domain_ids``.
        report_group: whether the report carries the gathered group (below).
        group: the weights of a group that spans several micro-batches (``global-batch``, from
            :meth:`SampleLoss.weigh_step`); None: this micro-batch across DP is the group.

    Returns:
        ``loss`` scalar, ``num_tokens`` int scalar (masked tokens of this rank), and ``report``:
        ``{name: tensor([sum, count])}`` to be summed over micro-batches and DP (x CP) ranks and
        logged as ``sum / count``: ``lm loss`` (unweighted token mean), ``weighted loss``,
        ``reweight r`` (inf = plain training), ``nonfinite`` (sum = number of non-finite samples,
        ratio = their fraction); with reweighting on, the statistics of
        :func:`reweighting.weight_stats` ``ess``, ``max_weight``, ``min_weight``, ``entropy``,
        ``low_loss_mass`` (means over groups); with ``domain_ids``, ``domain {d} loss``
        (unweighted token mean), ``domain {d} token_share`` and (reweighting on)
        ``domain {d} weight_share``. The names are those of the metrics file
        (docs/architecture.md). With reweighting on, also the gathered group itself, detached
        device tensors rather than pairs: ``group losses`` [N] and, with ``domain_ids``,
        ``group domain_ids`` [N].
    """
    check_strategy(strategy)
    if output_tensor.dim() != 2:
        raise RuntimeError(f"the model returned {tuple(output_tensor.shape)}, not per-token losses [b, s]; "
                           "reweighting needs per-token losses (call the model with labels)")
    device = output_tensor.device
    cp_size = 1 if cp_group is None else torch.distributed.get_world_size(group=cp_group)
    stock_loss, num_tokens = _stock_loss(output_tensor, loss_mask)
    live, losses, counts = cp_sample_loss(output_tensor, loss_mask, cp_group)  # [b] each
    b = losses.shape[0]
    nonfinite = ((counts > 0) & ~torch.isfinite(losses)).sum()
    report = {
        "lm loss": _pair(stock_loss, num_tokens, device),
        # Every CP rank holds the same samples: each counts 1 / cp of them, so the sum over ranks is right.
        "nonfinite": _pair(nonfinite / cp_size, b / cp_size, device) if cp_size > 1 else _pair(nonfinite, b, device),
    }
    if domain_ids is not None:
        if num_domains <= 0:
            raise ValueError("num_domains must be > 0 when domain_ids are given")
        report.update(_domain_report(losses, counts, domain_ids, num_domains))
    if strategy == "uniform" or math.isinf(r):
        report["weighted loss"] = report["lm loss"].clone()
        report["reweight r"] = _pair(math.inf, 1, device)
        return stock_loss, num_tokens, report

    if group is None:
        group = dp_sample_weights(losses, strategy=strategy, r=r, delta=delta, dp_group=dp_group,
                                  domain_ids=domain_ids)
    if report_group:
        report[GROUP_LOSSES] = group.losses
        if group.domain_ids is not None:
            report[GROUP_DOMAINS] = group.domain_ids

    # where(), not a product: a non-finite sample (weight 0) stays out of the value and of the
    # gradient, which 0 * nan would not.
    keep = group.local > 0
    weighted = (group.local * torch.where(keep, live, 0.0)).sum()
    # The schedule divides by max(num_tokens, 1) and by the micro-batches, DDP averages over DP (x CP):
    # undo all three, so the gradient is that of sum_{i in group} w_i * l_i.
    scale = torch.distributed.get_world_size(group=dp_group) * cp_size * group.scale
    loss = scale * num_tokens.clamp(min=1) * weighted

    stats = dict(group.stats or weight_stats(group.weights, group.losses, group.domain_ids, num_domains))
    stats.pop("num_nonfinite")  # reported per rank above, so that it sums to the step's count
    group_mass = stats.pop("group_mass", None)
    # Every entry below counts 1: one [k, 2] block, its rows the pairs (a few ops, not 4 per entry).
    names = ["weighted loss", "reweight r", *stats]
    values = [(scale * weighted).detach().reshape(1), torch.full((1,), r, device=device),
              torch.stack(list(stats.values()))]
    if group_mass is not None:
        names += [f"domain {d} weight_share" for d in range(num_domains)]
        values.append(group_mass)
    block = torch.cat(values).float()
    block = torch.stack([block, torch.ones_like(block)], dim=1)
    report.update(zip(names, block.unbind(0)))
    return loss, num_tokens, report
