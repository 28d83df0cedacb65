import math

import pytest

from annealvi_lib.theory.collapse import collapse_probability, optimal_beta_i
from annealvi_lib.theory.guidance import recommend_schedule


def test_recommendation_meets_target_at_the_optimal_start():
    kw = dict(d=512, R=3.0, w_star=0.8, lr=0.05)
    rec = recommend_schedule(0.1, **kw)
    beta_opt, _ = optimal_beta_i(100.0, **kw)
    assert rec.beta_i == pytest.approx(beta_opt)
    # t0 is rounded up to whole steps: the predicted probability is at or just below the target
    assert rec.p_predicted <= 0.1 + 1e-9
    assert float(collapse_probability(rec.beta_i, rec.t0 - 1, **kw)) > 0.1
    assert rec.rate == pytest.approx(rec.beta_i ** (-1.0 / rec.t0))
    # no other start reaches the target faster (the optimum maximises the exponent per step)
    for b in (rec.beta_i / 3, rec.beta_i * 3):
        assert float(collapse_probability(b, rec.t0, **kw)) > rec.p_predicted


def test_no_annealing_needed_when_target_is_above_vanilla():
    rec = recommend_schedule(0.999, d=16, R=3.0, w_star=0.8)
    assert rec.t0 == 0 and rec.beta_i == 1.0 and rec.status == "not_needed"
    assert rec.p_vanilla == pytest.approx(math.erf(4 * math.log(4) / 18))


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, float("nan")])
def test_invalid_target(p):
    with pytest.raises(ValueError, match="p_target"):
        recommend_schedule(p, d=512, R=3.0, w_star=0.8)


def test_unreachable_target_is_not_reported_as_not_needed():
    # R = 0.5: beta_c = alpha / R^2 > 1, so annealing from any start gains nothing in the closed
    # form and p = 0.1 cannot be reached (vanilla predicts 1.0)
    rec = recommend_schedule(0.1, d=512, R=0.5, w_star=0.8)
    assert rec.status == "not_reachable" and rec.t0 == 0
    assert rec.p_predicted > 0.1 and rec.beta_c > 1
    assert recommend_schedule(0.1, d=512, R=3.0, w_star=0.8).status == "anneal"
