"""Tests of annealvi_lib.metrics: Wilson interval, collapse criterion, masses, ESS, failures."""

import math

import numpy as np
import pytest

from annealvi_lib import metrics as M


def test_wilson_hand_computation():
    # k = 3, n = 10, z = 1.96 by hand: p = 0.3, z^2 = 3.8416,
    # centre = (0.3 + 0.19208) / 1.38416 = 0.355508..., half = 1.96 sqrt(0.021 + 0.00960400)/1.38416
    z2 = 1.96**2
    centre = (0.3 + z2 / 20) / (1 + z2 / 10)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 10 + z2 / 400) / (1 + z2 / 10)
    lo, hi = M.wilson_interval(3, 10)
    assert lo == pytest.approx(centre - half, rel=1e-12)
    assert hi == pytest.approx(centre + half, rel=1e-12)
    # known textbook values (Newcombe 1998, Table I: 15/148 -> 0.0624, 0.1605)
    lo, hi = M.wilson_interval(15, 148)
    assert (round(float(lo), 4), round(float(hi), 4)) == (0.0624, 0.1605)


def test_wilson_vectorised_and_edges():
    k = np.array([0, 5, 10])
    lo, hi = M.wilson_interval(k, 10)
    assert lo.shape == (3,) and lo[0] == 0.0 and hi[2] == pytest.approx(1.0)
    assert np.all(lo <= k / 10) and np.all(hi >= k / 10)
    # k = 0: upper bound z^2 / (n + z^2)
    assert hi[0] == pytest.approx(1.96**2 / (10 + 1.96**2), rel=1e-12)
    lo0, hi0 = M.wilson_interval(0, 0)
    assert (lo0, hi0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="k <= n"):
        M.wilson_interval(11, 10)
    with pytest.raises(ValueError, match="z"):
        M.wilson_interval(1, 10, z=0.0)


def test_target_projection_std():
    assert M.target_projection_std(3.0, 0.8) == pytest.approx(math.sqrt(1 + 4 * 0.16 * 9))
    assert abs(M.target_projection_std(3.0, 0.8) - 2.6) < 0.01   # the paper's 2.6
    with pytest.raises(ValueError, match="w_star"):
        M.target_projection_std(3.0, 1.0)


def _two_mode_proj(rng, n, w, R=3.0):
    sign = np.where(rng.random(n) < w, 1.0, -1.0)
    return sign * R + rng.standard_normal(n)


def test_collapse_and_masses_on_constructed_samples():
    rng = np.random.default_rng(0)
    n = 20000
    both = _two_mode_proj(rng, n, 0.8)
    heavy = 3.0 + rng.standard_normal(n)
    light = -3.0 + rng.standard_normal(n)
    proj = np.stack([both, heavy, light])
    res = M.run_summary(proj, np.zeros_like(proj))
    assert res["collapsed"].tolist() == [False, True, True]
    assert not res["failed"].any()
    # std of the two-mode samples: 2.6 up to MC error (~2.6/sqrt(2n) * few ~ 0.05)
    assert abs(res["proj_std"][0] - 2.6) < 0.05
    # mass on the heavy side: w* = 0.8 minus the tail P(N(-3,1) > 0) and plus P(N(3,1) < 0) terms:
    # 0.8 * Phi(3) + 0.2 * (1 - Phi(3)); binomial s.e. sqrt(.16/n) = 0.0028 -> 4 sigma = 0.012
    phi3 = 0.5 * (1 + math.erf(3 / math.sqrt(2)))
    assert abs(res["mass_plus"][0] - (0.8 * phi3 + 0.2 * (1 - phi3))) < 0.012
    assert res["mass_plus"][1] > 0.99 and res["mass_plus"][2] < 0.01
    assert np.allclose(res["ess"], 1.0)   # constant weights


def test_collapse_flags_threshold_and_nonfinite():
    collapsed, failed = M.collapse_flags(np.array([1.0, 1.59, 1.6, 2.6, np.nan, np.inf]))
    assert collapsed.tolist() == [True, True, False, False, False, False]
    assert failed.tolist() == [False, False, False, False, True, True]


def test_nonfinite_runs_are_failed_not_classified():
    rng = np.random.default_rng(1)
    proj = 3.0 + rng.standard_normal((3, 100))     # collapsed-looking
    log_w = np.zeros((3, 100))
    proj[1, 7] = np.nan
    log_w[2, 3] = -np.inf
    res = M.run_summary(proj, log_w)
    assert res["failed"].tolist() == [False, True, True]
    assert res["collapsed"].tolist() == [True, False, False]
    assert np.isnan(res["proj_std"][1:]).all() and np.isnan(res["ess"][1:]).all()
    rate = M.collapse_rate(res["collapsed"], res["failed"])
    assert (int(rate["k"]), int(rate["n"]), int(rate["n_failed"])) == (1, 1, 2)


def test_ess_fraction():
    # one dominant weight -> ESS ~ 1/n; two equal weights among n -> 2/n; shift invariance
    n = 50
    lw = np.full(n, -1000.0)
    lw[0] = 0.0
    assert M.ess_fraction(lw) == pytest.approx(1 / n)
    lw[1] = 0.0
    assert M.ess_fraction(lw + 1e4) == pytest.approx(2 / n)
    # a q that covers only the heavy mode of pi: weights pi/q = w* on the covered mode, so the
    # ESS fraction equals w* exactly when all samples fall there
    assert M.ess_fraction(np.full(n, math.log(0.8))) == pytest.approx(1.0)
    # Gaussian log weights with variance s^2: E[ESS] -> exp(-s^2) as n grows
    rng = np.random.default_rng(2)
    s = 0.5
    e = M.ess_fraction(s * rng.standard_normal(200000))
    assert abs(e - math.exp(-s * s)) < 0.01
    assert np.isnan(M.ess_fraction(np.array([0.0, np.nan])))


def test_collapse_rate_vectorised():
    c = np.array([[True, True, False, False], [False, False, False, False]])
    f = np.array([[False, False, False, True], [False, False, False, False]])
    r = M.collapse_rate(c, f)
    assert r["k"].tolist() == [2, 0] and r["n"].tolist() == [3, 4]
    assert r["p"].tolist() == pytest.approx([2 / 3, 0.0])
    lo, hi = M.wilson_interval([2, 0], [3, 4])
    assert np.allclose(r["lo"], lo) and np.allclose(r["hi"], hi)
