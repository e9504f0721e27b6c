"""The loss function's contract on plain tensors, its config, flags and start-up refusals."""

import math

import pytest
import torch
from megatron.core import parallel_state as ps

from megatron_patch.arguments import build_parser
from megatron_patch.errors import ArgumentError
from megatron_patch.loss import GROUP_DOMAINS, GROUP_LOSSES, ReweightConfig, SampleLoss, check_reweighting_supported
from megatron_patch.groups import per_sample_loss
from megatron_patch.loss import reweighted_loss
from reweighting import TemperatureSchedule, sample_weights, weight_stats
from tests.helpers.config import config_of
from tests.helpers.distributed import rank_device


def _reweight(*argv):
    return config_of(["--model", "tiny", "--mock-data", "--vocab-size", "64", "--train-iters", "1", *argv]).reweight


def test_flags_build_the_config():
    config = _reweight(
        "--reweight-strategy", "linupper", "--reweight-r", "0.4", "--reweight-delta", "2",
        "--reweight-warmup-iters", "10", "--reweight-warmup-mode", "large-r",
        "--reweight-warmup-r", "50", "--reweight-ramp-iters", "4",
    )
    assert config == ReweightConfig(strategy="linupper", r=0.4, delta=2.0, warmup_iters=10, warmup_mode="large-r",
                                    warmup_r=50.0, ramp_iters=4)
    assert config.schedule == TemperatureSchedule(target_r=0.4, warmup_iters=10, warmup_mode="large-r",
                                                  warmup_r=50.0, ramp_iters=4)
    assert config.r_at(0) == 50.0 and config.r_at(12) == pytest.approx(25.2) and config.r_at(14) == 0.4


def test_flag_defaults_are_the_dataclass_defaults():
    assert _reweight() == ReweightConfig()
    assert ReweightConfig().r_at(10**6) == math.inf  # uniform never reweights


def test_help_comes_from_the_field_metadata(monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")
    text = " ".join(build_parser("llama").format_help().split())
    assert "half-width of the min-max normalised loss range [-delta, delta] (default: 1.0)" in text
    assert "the temperature after warm-up and ramp (smaller reweights harder) (default: 1.0)" in text


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--reweight-r", "0"], "--reweight-r"),
        (["--reweight-r", "inf"], "--reweight-r"),
        (["--reweight-delta", "-1"], "--reweight-delta"),
        (["--reweight-warmup-iters", "-2"], "--reweight-warmup-iters"),
        (["--reweight-warmup-r", "nan"], "--reweight-warmup-r"),
        (["--reweight-ramp-iters", "-1"], "--reweight-ramp-iters"),
    ],
)
def test_invalid_values_name_their_flag(argv, flag):
    with pytest.raises(ArgumentError, match=f"^{flag} "):
        _reweight(*argv)


def test_unknown_strategy_is_refused_by_argparse():
    with pytest.raises(ArgumentError, match="--reweight-strategy: invalid choice: 'upper'"):
        _reweight("--reweight-strategy", "upper")


def test_refusals_name_the_flag_and_the_fix():
    config = ReweightConfig("linupper")
    with pytest.raises(ValueError, match="--calculate-per-token-loss .*drop the flag"):
        check_reweighting_supported(config, calculate_per_token_loss=True)
    check_reweighting_supported(config)
    check_reweighting_supported(ReweightConfig("uniform"), calculate_per_token_loss=True)


def _token_batch(b=4, s=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    token_loss = torch.rand(b, s, generator=gen) * 3
    mask = (torch.arange(s).unsqueeze(0) < torch.randint(1, s + 1, (b, 1), generator=gen)).float()
    return token_loss.to(rank_device()), mask.to(rank_device())


def test_per_sample_loss_is_the_masked_token_mean():
    token_loss, mask = _token_batch()
    mask[2] = 0
    token_loss[0, -1] = float("nan")
    mask[0, -1] = 0  # a non-finite loss on a masked-out token does not count
    losses, counts = per_sample_loss(token_loss, mask)
    for i in (0, 1, 3):
        keep = mask[i] > 0
        assert losses[i] == pytest.approx(token_loss[i][keep].mean().item(), rel=1e-6)
        assert counts[i] == keep.sum()
    assert math.isnan(losses[2]) and counts[2] == 0


def test_uniform_is_the_stock_loss_without_a_process_group():
    token_loss, mask = _token_batch()
    token_loss.requires_grad_(True)
    loss, num_tokens, report = reweighted_loss(mask, token_loss, strategy="uniform", r=1.0, dp_group=None)
    stock = torch.sum(token_loss.view(-1).float() * mask.view(-1).float())
    assert torch.equal(loss, stock) and num_tokens.dtype == torch.int32 and num_tokens == mask.sum()
    assert torch.equal(report["lm loss"], torch.stack([stock.detach(), mask.sum()]))
    assert report["reweight r"][0] == math.inf


def test_a_uniform_warmup_is_the_stock_loss():
    token_loss, mask = _token_batch()
    boundary = SampleLoss(ReweightConfig("linupper", r=0.5, warmup_iters=3), dp_group=None)
    boundary.start_step(2)
    loss, _, report = boundary.loss_func(mask)(token_loss)
    assert torch.equal(loss, torch.sum(token_loss.view(-1) * mask.view(-1)))
    assert "ess" not in report and GROUP_LOSSES not in report
    boundary.start_step(3)  # the first reweighted step needs the DP group
    with pytest.raises(ValueError, match="dp_group is required"):
        boundary.loss_func(mask)(token_loss)


def test_a_reduced_loss_is_refused():
    token_loss, mask = _token_batch()
    with pytest.raises(RuntimeError, match=r"returned \(\), not per-token losses"):
        reweighted_loss(mask, token_loss.sum(), strategy="linupper", r=1.0, dp_group=None)


def test_reweighting_needs_an_explicit_dp_group():
    token_loss, mask = _token_batch()
    with pytest.raises(ValueError, match="dp_group is required"):
        reweighted_loss(mask, token_loss, strategy="linupper", r=1.0, dp_group=None)


def check_report_over_dp(dp_size):
    """Run in every rank: the report, summed over micro-batches and DP as a loop does, is right."""
    dp_group = ps.get_data_parallel_group()
    rank = ps.get_data_parallel_rank()
    b, num_domains, r = 3, 2, 0.7
    totals, expected_weighted, expected_ess, expected_mass, domain_sums = {}, [], [], [], torch.zeros(2, 2)
    for micro in range(2):
        batches = [_token_batch(b, seed=10 * micro + k) for k in range(dp_size)]
        domains = [torch.tensor([k % 2, 1, 0], device=rank_device()) for k in range(dp_size)]
        token_loss, mask = batches[rank]
        token_loss = token_loss.clone().requires_grad_(True)
        boundary = SampleLoss(ReweightConfig("quadratic", r=r), dp_group, num_domains=num_domains)
        loss, num_tokens, report = boundary.loss_func(mask, domains[rank])(token_loss)
        group_losses, group_ids = report.pop(GROUP_LOSSES), report.pop(GROUP_DOMAINS)
        for key, value in report.items():
            totals[key] = totals.get(key, 0) + value
        # Independent: the concatenated group, in one process.
        all_losses = torch.cat([per_sample_loss(t, m)[0] for t, m in batches])
        torch.testing.assert_close(group_losses, all_losses)
        assert torch.equal(group_ids, torch.cat(domains))
        for (t, m), ids in zip(batches, domains):
            for d in range(num_domains):
                rows = ids == d
                domain_sums[d] += torch.stack([(t[rows] * m[rows]).sum(), m[rows].sum()]).cpu()
        w = sample_weights(all_losses, "quadratic", r)
        expected_weighted.append((w * all_losses).sum())
        stats = weight_stats(w, all_losses, torch.cat(domains), num_domains)
        expected_ess.append(stats["ess"])
        expected_mass.append(stats["group_mass"])
        # The value megatron-core turns into the gradient: loss / num_tokens * (1 / dp) per rank.
        mine = (w[rank * b : (rank + 1) * b] * all_losses[rank * b : (rank + 1) * b]).sum()
        torch.testing.assert_close(loss / num_tokens / dp_size, mine)
    for value in totals.values():
        torch.distributed.all_reduce(value, group=dp_group)
    mean = {key: (v[0] / v[1]).item() for key, v in totals.items()}
    assert mean["weighted loss"] == pytest.approx(torch.stack(expected_weighted).mean().item(), rel=1e-5)
    assert mean["ess"] == pytest.approx(torch.stack(expected_ess).mean().item(), rel=1e-5)
    assert mean["reweight r"] == pytest.approx(r)
    mass = torch.stack(expected_mass).mean(0)
    for d in range(num_domains):
        assert mean[f"domain {d} weight_share"] == pytest.approx(mass[d].item(), rel=1e-5)
    for d in range(num_domains):
        assert mean[f"domain {d} loss"] == pytest.approx((domain_sums[d][0] / domain_sums[d][1]).item(), rel=1e-5)
    assert totals["nonfinite"].tolist() == [0.0, 2 * dp_size * b]
    assert sum(mean[f"domain {d} token_share"] for d in range(num_domains)) == pytest.approx(1.0)


def test_report_sums_to_the_group_statistics(run_distributed):
    run_distributed(check_report_over_dp, 2, dp_size=2)


def check_empty_and_nonfinite_samples():
    """Run in every rank: an empty mask and a NaN loss get weight 0, a finite loss and finite grads."""
    dp_group = ps.get_data_parallel_group()
    token_loss, mask = _token_batch(4, seed=3 + ps.get_data_parallel_rank())
    mask[0] = 0
    leaf = token_loss.clone().requires_grad_(True)
    poisoned = leaf + torch.where(torch.arange(4, device=leaf.device).unsqueeze(1) == 1, float("nan"), 0.0)
    loss, _, report = reweighted_loss(mask, poisoned, strategy="extremes", r=0.3, dp_group=dp_group)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad[:2] == 0).all() and (leaf.grad[2:][mask[2:] > 0] != 0).all()
    assert report["nonfinite"].tolist() == [1.0, 4.0]  # the empty sample is not an error


def test_empty_and_nonfinite_samples(run_distributed):
    run_distributed(check_empty_and_nonfinite_samples, 2)


def check_near_uniform_weights_give_the_stock_gradient():
    """Run in every rank: full-length samples and r -> inf give the stock loss's per-token gradient.

    What reaches the gradient is ``loss / num_tokens / dp_size`` (schedule division, DDP average).
    """
    dp_group = ps.get_data_parallel_group()
    dp_size = torch.distributed.get_world_size(dp_group)
    token_loss, _ = _token_batch(4, seed=ps.get_data_parallel_rank())
    mask = torch.ones_like(token_loss)
    grads = []
    for strategy, r in (("uniform", 1.0), ("linupper", 1e9)):
        leaf = token_loss.clone().requires_grad_(True)
        loss, num_tokens, _ = reweighted_loss(mask, leaf, strategy=strategy, r=r, dp_group=dp_group)
        (loss / num_tokens / dp_size).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)


def test_near_uniform_weights_give_the_stock_gradient(run_distributed):
    run_distributed(check_near_uniform_weights_give_the_stock_gradient, 2)


def test_upstream_parser_gets_the_reweight_group():
    # Megatron-LM's extra_args_provider: our group on its own argparse parser, read back as the section.
    import argparse

    from megatron_patch.config import build_section
    from megatron_patch.loss import add_reweight_args

    args = add_reweight_args(argparse.ArgumentParser()).parse_args(["--reweight-strategy", "linupper",
                                                                    "--reweight-r", "0.4"])
    assert build_section(ReweightConfig, args) == ReweightConfig("linupper", r=0.4)


def check_group_only_when_asked():
    """Run in every rank: the gathered group is in the report unless report_group is off."""
    token_loss, mask = _token_batch(2, seed=ps.get_data_parallel_rank())
    config = ReweightConfig("linupper", r=0.5)
    with_group = SampleLoss(config, ps.get_data_parallel_group()).loss_func(mask)(token_loss)[2]
    pairs_only = SampleLoss(config, ps.get_data_parallel_group(), report_group=False).loss_func(mask)(token_loss)[2]
    assert with_group[GROUP_LOSSES].shape == (4,) and GROUP_DOMAINS not in with_group
    assert set(with_group) - set(pairs_only) == {GROUP_LOSSES}
    assert all(v.shape == (2,) for v in pairs_only.values())


def test_group_in_the_report_only_when_asked(run_distributed):
    run_distributed(check_group_only_when_asked, 2)


def test_global_batch_without_the_first_pass_is_refused():
    token_loss, mask = _token_batch()
    loss = SampleLoss(ReweightConfig("linupper", group="global-batch"), dp_group=None)
    loss.start_step(0)
    loss_func = loss.loss_func(mask)  # building it is harmless: the forward step does so on every stage
    with pytest.raises(RuntimeError, match="global-batch: no weights for this micro-batch"):
        loss_func(token_loss)
