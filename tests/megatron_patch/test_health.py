"""Weight health: its flags, and warnings only after ``patience`` bad log intervals in a row."""

import pytest

from megatron_patch.errors import ArgumentError
from megatron_patch.health import WeightHealth, WeightHealthConfig
from megatron_patch.logging_utils import _scalars
from tests.helpers.config import config_of


def _health(argv):
    return config_of(["--model", "tiny", "--mock-data", "--vocab-size", "64", "--train-iters", "1", *argv]).health


def test_weight_health_flags_reach_the_config():
    assert _health([]) == WeightHealthConfig()
    config = _health(["--weight-collapse-min-ess", "0.3", "--weight-collapse-max-weight", "8",
                      "--weight-collapse-patience", "2"])
    assert config == WeightHealthConfig(min_ess=0.3, max_weight=8.0, patience=2)
    with pytest.raises(ArgumentError, match="--weight-collapse-patience 0"):
        _health(["--weight-collapse-patience", "0"])
    with pytest.raises(ArgumentError, match="--reweight-health-min-ess"):
        _health(["--reweight-health-min-ess", "0.2"])  # not ours: named, not ignored
    with pytest.raises(ArgumentError, match="--weight-collapse-min-ess"):
        WeightHealthConfig(min_ess=2.0)


def test_weight_health_warns_after_patience():
    health = WeightHealth(WeightHealthConfig(min_ess=0.5, max_weight=3.0, patience=2))
    ok = {"iteration": 1, "ess": 0.8, "max_weight": 1.5}
    bad = {"iteration": 2, "ess": 0.2, "max_weight": 1.5}
    assert health.check(dict(ok)) is None
    assert health.check(dict(bad)) is None  # one bad interval is noise
    record = dict(bad, iteration=3, max_weight=4.0)
    warning = health.check(record)
    assert record["weight_collapse"] == 1
    assert "ESS/N 0.200 < 0.5" in warning and "N x max weight 4.00 > 3.0" in warning and "--reweight-r" in warning
    assert health.check(dict(ok)) is None and health.bad_intervals == 0
    assert health.check({"iteration": 5, "ess": None}) is None  # uniform warm-up: nothing to judge


def test_weight_health_needs_consecutive_bad_intervals_and_reaches_tensorboard():
    health = WeightHealth(_health(["--weight-collapse-patience", "3", "--weight-collapse-max-weight", "0"]))
    ess = [0.05, 0.05, 0.5, 0.05, 0.05, 0.05, 0.05]  # ESS/N per log interval; default bound 0.1
    records = [{"kind": "train", "iteration": 10 * (i + 1), "ess": e, "max_weight": 50.0} for i, e in enumerate(ess)]
    warnings = [health.check(r) for r in records]
    # A healthy interval resets the count; N x max weight is off (0); warned at 3 and 4 bad in a row.
    assert [w is not None for w in warnings] == [False, False, False, False, False, True, True]
    assert "iteration 60 for 3 log intervals" in warnings[5] and "ESS/N 0.050 < 0.1" in warnings[5]
    assert [r["weight_collapse"] for r in records] == [0, 0, 0, 0, 0, 1, 1]
    assert _scalars(records[5])["weight_collapse"] == 1.0
