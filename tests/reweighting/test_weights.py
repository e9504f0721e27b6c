"""sample_weights against an independent numpy implementation, properties, and errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reweighting import STRATEGIES, sample_weights

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)

REWEIGHTING = ("linupper", "quadratic", "extremes")


def reference_weights(losses, strategy, r, delta=1.0):
    """The paper's formulas, written independently in float64 numpy."""
    x = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(x)
    w = np.zeros_like(x)
    if not finite.any():
        return w
    if strategy == "uniform":
        w[finite] = 1.0 / finite.sum()
        return w
    f = x[finite]
    lo, hi = f.min(), f.max()
    h = np.zeros_like(f) if hi == lo else 2 * delta * (f - lo) / (hi - lo) - delta
    score = {
        "linupper": lambda h: np.minimum(h + delta, delta),
        "quadratic": lambda h: 1 - h**2 / delta**2,
        "extremes": np.abs,
    }[strategy](h)
    e = np.exp((score - score.max()) / r)
    w[finite] = e / e.sum()
    return w


finite_losses = st.lists(
    st.floats(min_value=0.0, max_value=20.0, allow_nan=False, width=32), min_size=1, max_size=64
)
temperatures = st.sampled_from([0.2, 0.4, 1.0, 3.0, 100.0])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("r", [0.1, 0.4, 1.0, 100.0])
@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_matches_reference(strategy, r, delta):
    gen = torch.Generator().manual_seed(hash((strategy, r, delta)) % 2**31)
    losses = torch.rand(37, generator=gen) * 6 + 1
    got = sample_weights(losses, strategy, r, delta)
    want = reference_weights(losses.numpy(), strategy, r, delta)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-7)


def test_paper_example_linupper_caps_the_upper_half():
    # h = [-1, -0.5, 0, 0.5, 1] -> s = [0, 0.5, 1, 1, 1]: everything at or above the midpoint ties.
    w = sample_weights(torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), "linupper", r=1.0)
    e = np.exp([0.0, 0.5, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(w.numpy(), e / e.sum(), rtol=1e-6)
    assert w[2] == w[3] == w[4]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_any_float_dtype_gives_float32(dtype):
    losses = torch.tensor([1.0, 2.0, 3.5, 0.5], dtype=dtype)
    w = sample_weights(losses, "linupper", 0.5)
    assert w.dtype == torch.float32 and w.shape == (4,)
    np.testing.assert_allclose(
        w.numpy(), reference_weights(losses.float().numpy(), "linupper", 0.5), rtol=1e-5
    )


def test_uniform_is_exactly_one_over_n_finite():
    losses = torch.tensor([3.0, float("nan"), 1.0, float("inf"), 2.0, -float("inf"), 7.0])
    w = sample_weights(losses, "uniform", 1.0)
    assert w.tolist() == [0.25, 0.0, 0.25, 0.0, 0.25, 0.0, 0.25]
    w = sample_weights(torch.rand(3), "uniform", 1.0)
    assert torch.equal(w, torch.full((3,), 1.0 / 3.0))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_non_finite_losses_get_zero_and_do_not_move_min_max(strategy):
    clean = torch.tensor([1.0, 2.0, 3.0, 4.0])
    dirty = torch.tensor([1.0, float("nan"), 2.0, float("inf"), 3.0, -float("inf"), 4.0])
    w = sample_weights(dirty, strategy, 0.5)
    assert torch.equal(w[[1, 3, 5]], torch.zeros(3))
    torch.testing.assert_close(w[[0, 2, 4, 6]], sample_weights(clean, strategy, 0.5))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_all_non_finite_gives_zero_weights_not_nan(strategy):
    w = sample_weights(torch.tensor([float("nan"), float("inf")]), strategy, 1.0)
    assert torch.equal(w, torch.zeros(2))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_equal_losses_give_uniform_weights(strategy):
    w = sample_weights(torch.full((6,), 2.5), strategy, 0.1)
    torch.testing.assert_close(w, torch.full((6,), 1 / 6))


def test_single_sample_gets_all_weight():
    for strategy in STRATEGIES:
        assert sample_weights(torch.tensor([4.2]), strategy, 1.0).tolist() == [1.0]


def test_weights_stay_on_device_of_input():
    w = sample_weights(torch.rand(5, device="meta"), "linupper", 1.0)
    assert w.device.type == "meta"


def test_weights_are_not_differentiated():
    losses = torch.rand(5, requires_grad=True)
    assert not sample_weights(losses, "linupper", 1.0).requires_grad


def test_compiles_without_graph_breaks():
    compiled = torch.compile(sample_weights, fullgraph=True, backend="eager")
    losses = torch.tensor([1.0, float("nan"), 3.0, 0.5, 2.0])
    for strategy in STRATEGIES:
        torch.testing.assert_close(compiled(losses, strategy, 0.4), sample_weights(losses, strategy, 0.4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="softmax", r=1.0), "choose one of uniform, linupper"),
        (dict(strategy="upper", r=1.0), "ambiguous"),
        (dict(strategy="mid", r=1.0), "use 'quadratic'"),
        (dict(strategy="linupper", r=0.0), "r must be finite and > 0, got 0.0"),
        (dict(strategy="linupper", r=-1.0), "got -1.0"),
        (dict(strategy="linupper", r=math.inf), "got inf"),
        (dict(strategy="linupper", r=math.nan), "got nan"),
        (dict(strategy="uniform", r=0.0), "r must be finite"),
        (dict(strategy="linupper", r=1.0, delta=0.0), "delta must be finite and > 0, got 0.0"),
        (dict(strategy="linupper", r=1.0, delta=-2), "got -2"),
    ],
)
def test_errors_name_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        sample_weights(torch.rand(4), **kwargs)


def test_losses_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"1-D \[N\], got shape \(2, 3\)"):
        sample_weights(torch.rand(2, 3), "linupper", 1.0)


# ---------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(finite_losses, st.sampled_from(STRATEGIES), temperatures)
def test_nonnegative_and_sums_to_one(losses, strategy, r):
    w = sample_weights(torch.tensor(losses), strategy, r)
    assert (w >= 0).all()
    assert abs(w.sum().item() - 1.0) < 1e-5


@settings(max_examples=60, deadline=None)
@given(finite_losses, st.sampled_from(REWEIGHTING), temperatures, st.randoms(use_true_random=False))
def test_permutation_equivariant(losses, strategy, r, rnd):
    x = torch.tensor(losses)
    perm = list(range(len(losses)))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    torch.testing.assert_close(sample_weights(x[perm], strategy, r), sample_weights(x, strategy, r)[perm])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=2, max_size=40),
    st.sampled_from(REWEIGHTING),
    temperatures,
    st.integers(-50, 50),
    st.sampled_from([0.25, 0.5, 2.0, 4.0]),
)
def test_invariant_to_shift_and_positive_scale(ints, strategy, r, shift, scale):
    # Integers and power-of-two scales keep the arithmetic exact, so the normalised h is identical.
    x = torch.tensor(ints, dtype=torch.float64) / 8
    base = sample_weights(x, strategy, r)
    torch.testing.assert_close(sample_weights(x + shift, strategy, r), base)
    torch.testing.assert_close(sample_weights(x * scale, strategy, r), base)


@settings(max_examples=60, deadline=None)
@given(finite_losses, temperatures)
def test_linupper_weight_non_decreasing_in_loss(losses, r):
    x = torch.tensor(losses)
    order = torch.argsort(x, stable=True)
    w = sample_weights(x, "linupper", r)[order]
    assert (w[1:] >= w[:-1] * (1 - 1e-6)).all()


@settings(max_examples=60, deadline=None)
@given(finite_losses, temperatures, st.sampled_from([0.5, 1.0, 2.0]))
def test_linupper_weight_ratio_bounded(losses, r, delta):
    w = sample_weights(torch.tensor(losses), "linupper", r, delta)
    assert (w.max() / w.min()).item() <= math.exp(delta / r) * (1 + 1e-5)


@settings(max_examples=40, deadline=None)
@given(finite_losses, st.sampled_from(REWEIGHTING))
def test_large_r_approaches_uniform(losses, strategy):
    w = sample_weights(torch.tensor(losses), strategy, 1e4)
    assert torch.allclose(w, torch.full_like(w, 1 / len(losses)), rtol=1e-3)
