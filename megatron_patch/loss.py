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

import dataclasses
import functools
import math
from typing import ClassVar

import torch

from reweighting import STRATEGIES, WARMUP_MODES, TemperatureSchedule, check_delta, check_strategy
from reweighting import sample_weights, weight_stats

from .config import add_flags, check_ranges, flag
from .errors import ArgumentError

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
        """What checkpoints and the run record keep: strategy, delta and the schedule's fields."""
        return {"strategy": self.strategy, "delta": self.delta, **self.schedule.state_dict()}


class SampleLoss:
    """The loss boundary of a run: built once by the loop, one ``loss_func`` per micro-batch.

    Args:
        config: the reweighting configuration.
        dp_group: the data-parallel process group the group's losses are gathered over.
        num_domains: the number of domains of the training blend (per-domain report entries
            when there are several).
        report_group: put the gathered group (``group losses`` [N], ``group domain_ids`` [N])
            in the report for the metrics file; off for a loop that expects pairs only.
    """

    def __init__(self, config: ReweightConfig, dp_group, num_domains: int = 0, *, report_group: bool = True):
        self.config = config
        self.dp_group = dp_group
        self.num_domains = num_domains if num_domains > 1 else 0
        self.report_group = report_group
        self.iteration = 0

    def start_step(self, iteration: int) -> None:
        """The loop's word: the next micro-batches belong to ``iteration`` (it sets r)."""
        self.iteration = iteration

    def loss_func(self, loss_mask: torch.Tensor, domain_ids: torch.Tensor | None = None):
        """The ``loss_func(output_tensor) -> (loss, num_tokens, report)`` of one micro-batch.

        Args:
            loss_mask: [b, s] 1 for tokens that count.
            domain_ids: optional [b] domain of each sample (``BlendedDataset``'s dataset id).
        """
        return functools.partial(
            reweighted_loss, loss_mask, strategy=self.config.strategy, r=self.config.r_at(self.iteration),
            delta=self.config.delta, dp_group=self.dp_group,
            domain_ids=domain_ids if self.num_domains else None, num_domains=self.num_domains,
            report_group=self.report_group,
        )


def add_reweight_args(parser):
    """The ``--reweight-*`` flag group on ``parser`` (Megatron-LM's ``extra_args_provider``); returns it.

    Read it back with ``build_section(ReweightConfig, args)`` (:mod:`megatron_patch.config`).
    """
    add_flags(parser, ReweightConfig, "reweighting", "online loss-based per-sample reweighting (Sow et al.)")
    return parser


def check_reweighting_supported(
    config: ReweightConfig, *, context_parallel_size: int = 1, calculate_per_token_loss: bool = False
) -> None:
    """Refuse, at start-up, parallel settings under which the reweighted loss would be wrong.

    Raises :class:`ArgumentError` naming the flag and what to do. Nothing is refused for ``uniform``.
    """
    if not config.reweighting:
        return
    if context_parallel_size > 1:
        raise ArgumentError(
            f"--context-parallel-size {context_parallel_size} is not supported with --reweight-strategy "
            f"{config.strategy} (a sample's tokens would be split across ranks); use --context-parallel-size 1"
        )
    if calculate_per_token_loss:
        raise ArgumentError(
            f"--calculate-per-token-loss is not supported with --reweight-strategy {config.strategy} "
            "(weights are per sample, the loss is a weighted mean of per-sample means); drop the flag"
        )


def per_sample_loss(token_loss: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean loss of each sample over its mask (differentiable).

    Args:
        token_loss: [b, s] per-token losses.
        loss_mask: [b, s] (or [b*s]) 1 for tokens that count.

    Returns:
        ``losses`` [b] float32 (NaN where the mask is empty, non-finite where a counted token is)
        and ``counts`` [b] float32, the number of masked tokens.
    """
    mask = loss_mask.view_as(token_loss) > 0
    # torch.where, not a product: a non-finite loss on a masked-out token must not leak into the sum.
    sums = torch.where(mask, token_loss.float(), 0.0).sum(dim=1)
    counts = mask.sum(dim=1).float()
    # clamp keeps the backward of an empty sample finite (0/0 would be NaN even with zero grad).
    return torch.where(counts > 0, sums / counts.clamp(min=1), math.nan), counts


def gather_dp(local: torch.Tensor, dp_group) -> torch.Tensor:
    """All-gather ``local`` [b, k] (detached) over the DP group into [dp_size * b, k], DP-rank-major."""
    dp_size = torch.distributed.get_world_size(group=dp_group)
    out = local.new_empty((dp_size * local.shape[0], *local.shape[1:]))
    torch.distributed.all_gather_into_tensor(out, local.detach().contiguous(), group=dp_group)
    return out


def dp_sample_weights(
    losses: torch.Tensor, *, strategy: str, r: float, delta: float, dp_group, domain_ids: torch.Tensor | None = None
):
    """Weights of this rank's samples, computed over the micro-batch of the whole DP group.

    Args:
        losses: [b] detached per-sample losses of this rank.
        domain_ids: optional [b] domain ids, gathered in the same collective.

    Returns:
        ``(w_local [b], weights [dp*b], group_losses [dp*b], group_ids [dp*b] long or None)``;
        every DP rank holds the same ``weights``; ``w_local`` is its slice by its DP rank.
    """
    if dp_group is None:
        # None would mean the world group, which is not the DP group under TP or PP.
        raise ValueError("dp_group is required: pass parallel_state.get_data_parallel_group()")
    b = losses.shape[0]
    dp_rank = torch.distributed.get_rank(group=dp_group)
    # One collective: losses and domain ids travel together (ids are exact in float32 below 2**24).
    ids = domain_ids.float() if domain_ids is not None else torch.zeros_like(losses)
    group = gather_dp(torch.stack([losses.float(), ids], dim=1), dp_group)  # [dp*b, 2]
    weights = sample_weights(group[:, 0], strategy, r, delta)  # [dp*b], 0 where non-finite
    group_ids = group[:, 1].long() if domain_ids is not None else None
    return weights[dp_rank * b : (dp_rank + 1) * b], weights, group[:, 0], group_ids


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
    domain_ids: torch.Tensor | None = None,
    num_domains: int = 0,
    report_group: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """megatron-core ``loss_func``: ``(loss, num_tokens, report)`` for one micro-batch.

    Args:
        loss_mask: [b, s] (or [b*s]) 1 for tokens that count.
        output_tensor: [b, s] per-token losses (GPTModel's output when labels are given).
        strategy: a :data:`reweighting.STRATEGIES` name.
        r: the temperature in effect (``config.r_at(iteration)``); ``inf`` = plain training.
        delta: half-width of the normalised loss range.
        dp_group: the data-parallel process group (``parallel_state.get_data_parallel_group()``).
        domain_ids: optional [b] integer domain of each sample (``BlendedDataset``'s dataset id).
        num_domains: the number of domains; needed with ``domain_ids``.
        report_group: whether the report carries the gathered group (below).

    Returns:
        ``loss`` scalar, ``num_tokens`` int scalar (masked tokens of this rank), and ``report``:
        ``{name: tensor([sum, count])}`` to be summed over micro-batches and DP ranks and logged
        as ``sum / count``: ``lm loss`` (unweighted token mean), ``weighted loss``, ``reweight r``
        (inf = plain training), ``nonfinite`` (sum = number of non-finite samples, ratio = their
        fraction); with reweighting on, the statistics of :func:`reweighting.weight_stats`
        ``ess``, ``max_weight``, ``min_weight``, ``entropy``, ``low_loss_mass`` (means over
        micro-batches); with ``domain_ids``, ``domain {d} loss`` (unweighted token mean),
        ``domain {d} token_share`` and (reweighting on) ``domain {d} weight_share``. The names
        are those of the metrics file (docs/architecture.md). With reweighting on, also the
        gathered group itself, detached device tensors rather than pairs: ``group losses`` [N]
        and, with ``domain_ids``, ``group domain_ids`` [N].
    """
    check_strategy(strategy)
    if output_tensor.dim() != 2:
        raise RuntimeError(f"the model returned {tuple(output_tensor.shape)}, not per-token losses [b, s]; "
                           "reweighting needs per-token losses (call the model with labels)")
    device = output_tensor.device
    stock_loss, num_tokens = _stock_loss(output_tensor, loss_mask)
    live, counts = per_sample_loss(output_tensor, loss_mask)  # [b], [b]
    losses = live.detach()
    b = losses.shape[0]
    report = {
        "lm loss": _pair(stock_loss, num_tokens, device),
        "nonfinite": _pair(((counts > 0) & ~torch.isfinite(losses)).sum(), b, device),
    }
    if domain_ids is not None:
        if num_domains <= 0:
            raise ValueError("num_domains must be > 0 when domain_ids are given")
        report.update(_domain_report(losses, counts, domain_ids, num_domains))
    if strategy == "uniform" or math.isinf(r):
        report["weighted loss"] = report["lm loss"].clone()
        report["reweight r"] = _pair(math.inf, 1, device)
        return stock_loss, num_tokens, report

    w_local, weights, group_losses, group_ids = dp_sample_weights(
        losses, strategy=strategy, r=r, delta=delta, dp_group=dp_group, domain_ids=domain_ids
    )
    dp_size = torch.distributed.get_world_size(group=dp_group)
    if report_group:
        report[GROUP_LOSSES] = group_losses
        if group_ids is not None:
            report[GROUP_DOMAINS] = group_ids

    # where(), not a product: a non-finite sample (weight 0) stays out of the value and of the
    # gradient, which 0 * nan would not.
    keep = w_local > 0
    weighted = (w_local * torch.where(keep, live, 0.0)).sum()
    # The schedule divides by max(num_tokens, 1) and DDP averages over DP: undo both.
    loss = dp_size * num_tokens.clamp(min=1) * weighted

    stats = weight_stats(weights, group_losses, group_ids, num_domains)
    stats.pop("num_nonfinite")  # reported per rank above, so that it sums to the step's count
    group_mass = stats.pop("group_mass", None)
    # Every entry below counts 1: one [k, 2] block, its rows the pairs (a few ops, not 4 per entry).
    names = ["weighted loss", "reweight r", *stats]
    values = [(dp_size * weighted).detach().reshape(1), torch.full((1,), r, device=device),
              torch.stack(list(stats.values()))]
    if group_mass is not None:
        names += [f"domain {d} weight_share" for d in range(num_domains)]
        values.append(group_mass)
    block = torch.cat(values).float()
    block = torch.stack([block, torch.ones_like(block)], dim=1)
    report.update(zip(names, block.unbind(0)))
    return loss, num_tokens, report
