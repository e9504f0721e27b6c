"""The toy linear-regression experiment: the paper's ordering with fixed seeds, and its plumbing.

Findings pinned here are the ones docs/toy_regression.md reports; if one flips, update both.
"""

import json

import numpy as np
import pytest
import torch

from reweighting import STRATEGIES
from tools.experiments.toy_regression import ToyConfig, batch_order, expected_test_loss, main, make_problem, run, train

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)

SEEDS = (0, 1, 2, 3, 4)


def wins(result, key, strategy, against="uniform"):
    """Seeds on which ``strategy`` is strictly below ``against`` (None = never reached = worst)."""
    inf = float("inf")
    a, b = result[key][strategy], result[key][against]
    return sum((a[s] if a[s] is not None else inf) < (b[s] if b[s] is not None else inf) for s in SEEDS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As the CLI does: tiny tensors, and spare threads only spin on busy CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def noisy():
    """The documented default: label noise 0.1, 300 steps (the last ~200 at the noise floor)."""
    return run(ToyConfig(), SEEDS)


@pytest.fixture(scope="module")
def noiseless():
    """The theory's interpolation setting: same setup without label noise."""
    return run(ToyConfig(noise=0.0), SEEDS)


def test_linupper_converges_fastest(noisy):
    # Paper, Fig. 7: LinUpper converges fastest of all, Quadratic also beats uniform.
    for other in ("uniform", "quadratic", "extremes"):
        assert wins(noisy, "speed", "linupper", other) >= 4, (other, noisy["speed"])
    assert wins(noisy, "speed", "quadratic") >= 4, noisy["speed"]


def test_linupper_ends_lower_without_label_noise(noiseless):
    # The criterion holds where the end point is not a noise floor.
    assert wins(noiseless, "final", "linupper") >= 4, noiseless["final"]
    assert wins(noiseless, "speed", "linupper") >= 4, noiseless["speed"]


def test_with_label_noise_the_floor_is_shared_and_linupper_does_not_beat_uniform(noisy):
    # At the floor the largest losses are the noisiest labels, so LinUpper's extra weight on them
    # adds gradient noise: its final loss is a few percent above uniform's, not below.
    final = noisy["final"]
    assert wins(noisy, "final", "linupper") <= 1, final
    for strat in STRATEGIES:
        for s in SEEDS:
            assert final[strat][s] == pytest.approx(final["uniform"][s], rel=0.1)


def test_uniform_is_plain_minibatch_sgd():
    cfg = ToyConfig(d=8, n=64, batch=8, steps=12, lr=0.05)
    w_star, x, y, w0 = (t.numpy() for t in make_problem(cfg, seed=3))
    w = w0.copy()
    for idx in batch_order(cfg.n, cfg.batch, cfg.steps, seed=3).numpy():
        xb, yb = x[idx], y[idx]
        w -= cfg.lr * xb.T @ (xb @ w - yb) / cfg.batch  # gradient of the batch-mean of (xw-y)^2/2
    want = 0.5 * (np.sum((w - w_star) ** 2) + cfg.noise**2)
    curves = train(cfg, seed=3)["test_loss"]
    assert curves["uniform"][-1] == pytest.approx(want, rel=1e-12)
    assert len({c[0] for c in curves.values()}) == 1  # one init shared by all strategies


def test_batch_order_is_a_permutation_per_epoch():
    order = batch_order(n=100, batch=32, steps=7, seed=0)  # 3 batches per epoch, tail dropped
    assert order.shape == (7, 32)
    for epoch in range(2):
        seen = order[3 * epoch : 3 * epoch + 3].flatten()
        assert len(set(seen.tolist())) == 96


def test_expected_test_loss_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    d, noise = 10, 0.3
    w_star = torch.randn(d, generator=g, dtype=torch.float64)
    w = torch.randn(1, d, generator=g, dtype=torch.float64)  # [S=1, d]
    x = torch.randn(200_000, d, generator=g, dtype=torch.float64)
    y = x @ w_star + noise * torch.randn(200_000, generator=g, dtype=torch.float64)
    sampled = 0.5 * ((x @ w[0] - y) ** 2).mean()
    assert expected_test_loss(w, w_star, noise).item() == pytest.approx(sampled.item(), rel=0.02)


def test_cli_writes_table_and_json(tmp_path):
    main(["--out", str(tmp_path), "--seeds", "0", "1", "--steps", "20", "--no-plot"])
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["final"]) == set(STRATEGIES)
    assert len(result["runs"]["0"]["steps"]) == 21
    assert "| linupper |" in (tmp_path / "results.md").read_text()
    assert not (tmp_path / "toy_regression.png").exists()


def test_cli_plot(tmp_path):
    pytest.importorskip("matplotlib")
    main(["--out", str(tmp_path), "--seeds", "0", "--steps", "10"])
    assert (tmp_path / "toy_regression.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
