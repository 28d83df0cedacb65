import numpy as np
import pytest

from annealvi_lib.models.schedules import SCHEDULES, Schedule, annealing_rate, exp_schedule, make_schedule


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_endpoints_and_monotone(name):
    beta_i, t0 = 1e-3, 200.0
    sched = make_schedule(name, beta_i=beta_i, t0=t0)
    t = np.arange(0, 400)
    b = np.asarray(sched(t))
    assert np.all((b > 0) & (b <= 1))
    assert np.all(np.diff(b) >= -1e-7), "beta must be non-decreasing"
    assert b[-1] == pytest.approx(1.0)
    if name == "constant":
        assert np.all(b == 1.0)
    else:
        assert b[0] == pytest.approx(beta_i, rel=1e-5)
        assert np.all(b[t >= t0] == pytest.approx(1.0))
        assert np.all(b[t < t0 - 1] < 1.0)


def test_exp_rate():
    beta_i, t0 = 1e-2, 100.0
    b = np.asarray(exp_schedule(np.arange(100), beta_i=beta_i, t0=t0), dtype=float)
    ratios = b[1:] / b[:-1]
    np.testing.assert_allclose(ratios, annealing_rate(beta_i, t0), rtol=1e-4)
    assert Schedule("exp", beta_i, t0).rate == pytest.approx(beta_i ** (-1 / t0))


def test_linear_temperature_midpoint():
    s = Schedule("linear_temperature", 0.1, 100)
    assert float(s(50)) == pytest.approx(1 / 5.5, rel=1e-6)


@pytest.mark.parametrize("kwargs, field", [
    (dict(name="exp", beta_i=0.0, t0=10), "beta_i"),
    (dict(name="exp", beta_i=1.5, t0=10), "beta_i"),
    (dict(name="exp", beta_i=float("nan"), t0=10), "beta_i"),
    (dict(name="exp", beta_i=0.1, t0=0), "t0"),
    (dict(name="exp", beta_i=0.1, t0=-1), "t0"),
    (dict(name="exp", beta_i=0.1, t0=float("inf")), "t0"),
    (dict(name="cosine", beta_i=0.1, t0=10), "schedule"),
])
def test_invalid_parameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Schedule(**kwargs)


def test_plain_function_validates():
    with pytest.raises(ValueError, match="beta_i"):
        exp_schedule(0, beta_i=2.0, t0=10)
    with pytest.raises(ValueError, match="t0"):
        annealing_rate(0.5, 0)
