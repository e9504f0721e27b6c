import math

import numpy as np
import pytest
import torch

from reweighting import sample_weights, weight_stats

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_uniform_weights_have_ideal_stats():
    losses = torch.tensor([3.0, 1.0, 2.0, 5.0])
    s = weight_stats(sample_weights(losses, "uniform", 1.0), losses)
    torch.testing.assert_close(s["ess"], torch.tensor(1.0))
    torch.testing.assert_close(s["max_weight"], torch.tensor(1.0))
    torch.testing.assert_close(s["min_weight"], torch.tensor(1.0))
    torch.testing.assert_close(s["entropy"], torch.tensor(math.log(4)))
    torch.testing.assert_close(s["low_loss_mass"], torch.tensor(0.5))
    assert s["num_nonfinite"] == 0


def test_stats_against_numpy():
    gen = torch.Generator().manual_seed(0)
    losses = torch.rand(11, generator=gen) * 3
    w = sample_weights(losses, "linupper", 0.3)
    s = weight_stats(w, losses)
    wn, xn = w.double().numpy(), losses.double().numpy()
    n = len(wn)
    np.testing.assert_allclose(s["ess"].item(), 1 / np.sum(wn**2) / n, rtol=1e-5)
    np.testing.assert_allclose(s["max_weight"].item(), n * wn.max(), rtol=1e-5)
    np.testing.assert_allclose(s["min_weight"].item(), n * wn.min(), rtol=1e-5)
    np.testing.assert_allclose(s["entropy"].item(), -np.sum(wn * np.log(wn)), rtol=1e-5)
    lowest_five = np.argsort(xn)[: n // 2]
    np.testing.assert_allclose(s["low_loss_mass"].item(), wn[lowest_five].sum(), rtol=1e-5)
    assert s["low_loss_mass"] < 5 / 11  # linupper moves weight away from the low losses


def test_non_finite_samples_are_counted_and_excluded():
    losses = torch.tensor([1.0, float("nan"), 2.0, float("inf"), 3.0, 4.0])
    w = sample_weights(losses, "uniform", 1.0)
    s = weight_stats(w, losses)
    assert s["num_nonfinite"] == 2
    torch.testing.assert_close(s["ess"], torch.tensor(1.0))  # N counts the 4 finite samples
    torch.testing.assert_close(s["min_weight"], torch.tensor(1.0))
    torch.testing.assert_close(s["low_loss_mass"], torch.tensor(0.5))


def test_group_mass_per_domain():
    losses = torch.tensor([1.0, 5.0, 2.0, 4.0, 3.0])
    ids = torch.tensor([0, 2, 0, 2, 1])
    w = sample_weights(losses, "linupper", 1.0)
    s = weight_stats(w, losses, ids, num_groups=4)
    want = [w[[0, 2]].sum(), w[4], w[[1, 3]].sum(), 0.0]
    torch.testing.assert_close(s["group_mass"], torch.tensor(want))
    torch.testing.assert_close(s["group_mass"].sum(), torch.tensor(1.0))


def test_group_ids_need_num_groups():
    with pytest.raises(ValueError, match="num_groups must be > 0"):
        weight_stats(torch.ones(2) / 2, torch.ones(2), torch.zeros(2, dtype=torch.long))


def test_collapse_is_visible():
    losses = torch.tensor([0.0] * 7 + [10.0])
    s = weight_stats(sample_weights(losses, "linupper", 0.05), losses)
    assert s["ess"] < 0.2 and s["max_weight"] > 7.9


def test_stats_compile_without_graph_breaks():
    compiled = torch.compile(weight_stats, fullgraph=True, backend="eager")
    losses = torch.tensor([1.0, float("nan"), 3.0, 2.0])
    w = sample_weights(losses, "linupper", 1.0)
    for key, value in weight_stats(w, losses).items():
        torch.testing.assert_close(compiled(w, losses)[key], value)
