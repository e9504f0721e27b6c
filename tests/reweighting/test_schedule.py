import json
import math

import pytest

from reweighting import TemperatureSchedule

pytestmark = pytest.mark.one_stack  # nothing here depends on megatron-core: the second stack skips it (pytest.ini)


def test_uniform_warmup_then_target():
    s = TemperatureSchedule(target_r=0.4, warmup_iters=3)
    assert [s.r_at(i) for i in range(5)] == [math.inf, math.inf, math.inf, 0.4, 0.4]
    assert [s.reweighting_at(i) for i in (0, 2, 3)] == [False, False, True]


def test_large_r_warmup_reweights_with_warmup_r():
    s = TemperatureSchedule(target_r=1.0, warmup_iters=2, warmup_mode="large-r", warmup_r=100.0)
    assert [s.r_at(i) for i in range(4)] == [100.0, 100.0, 1.0, 1.0]
    assert s.reweighting_at(0)


def test_linear_ramp_after_warmup():
    s = TemperatureSchedule(target_r=1.0, warmup_iters=10, warmup_r=9.0, ramp_iters=4)
    assert [s.r_at(i) for i in range(10, 16)] == [9.0, 7.0, 5.0, 3.0, 1.0, 1.0]
    assert s.r_at(9) == math.inf


def test_no_warmup_is_target_from_the_start():
    assert TemperatureSchedule(target_r=0.5).r_at(0) == 0.5


def test_state_round_trips_through_json():
    s = TemperatureSchedule(target_r=0.4, warmup_iters=7, warmup_mode="large-r", warmup_r=50.0, ramp_iters=3)
    restored = TemperatureSchedule.from_state_dict(json.loads(json.dumps(s.state_dict())))
    assert restored == s
    assert [restored.r_at(i) for i in range(12)] == [s.r_at(i) for i in range(12)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_r=0.0), "r must be finite and > 0, got 0.0"),
        (dict(target_r=1.0, warmup_r=-1.0), "got -1.0"),
        (dict(target_r=1.0, warmup_mode="cosine"), "unknown warm-up mode 'cosine'; choose one of uniform, large-r"),
        (dict(target_r=1.0, warmup_iters=-1), "warmup_iters must be an integer >= 0, got -1"),
        (dict(target_r=1.0, ramp_iters=1.5), "ramp_iters must be an integer >= 0, got 1.5"),
    ],
)
def test_bad_configuration_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TemperatureSchedule(**kwargs)
