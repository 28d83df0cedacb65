import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import jax.flatten_util

from annealvi_lib.models.schedules import Schedule
from annealvi_lib.models.student import (SAMPLINGS, Hyper, StudentState, classify_collapse, init_student,
                                  jko_step, mc_loss, mc_loss_categorical, sample_labels,
                                  seed_keys, simulate, simulate_seeds, summary_stats)
from annealvi_lib.models.targets import Target, log_partition, make_target


def test_loss_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        d, B = 6, 64
        target = Target(mu_star=jnp.eye(d, dtype=jnp.float64)[0], R=2.0, w_star=0.7)
        k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        mu = jax.random.normal(k1, (2, d), dtype=jnp.float64)
        var = jnp.array([0.7, 1.9], dtype=jnp.float64)
        z = jax.random.normal(k2, (2, B, d), dtype=jnp.float64)
        state = StudentState(mu, var)
        beta = 0.37
        grads = jax.grad(mc_loss)(state, target, beta, z)
        flat, unravel = jax.flatten_util.ravel_pytree(state)
        f = lambda v: float(mc_loss(unravel(v), target, beta, z))
        h = 1e-6
        fd = np.array([(f(flat.at[i].add(h)) - f(flat.at[i].add(-h))) / (2 * h)
                       for i in range(flat.size)])
        np.testing.assert_allclose(np.asarray(jax.flatten_util.ravel_pytree(grads)[0]), fd,
                                   rtol=1e-6, atol=1e-7)


def test_update_keeps_means_on_sphere():
    target = make_target(32, 3.0, 0.8)
    state = init_student(jax.random.key(1), 32, 3.0, 5.0)
    for i in range(5):
        state, _ = jko_step(state, jax.random.key(10 + i), target, 0.2, Hyper(0.05, 64))
        np.testing.assert_allclose(np.linalg.norm(np.asarray(state.mu), axis=-1), 3.0, rtol=1e-5)
    assert np.all(np.asarray(state.var) > 0)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_kl_is_minimal_at_both_modes_with_equilibrium_variance(beta):
    # KL(q || pi_beta) at mu = +-R mu*, sigma^2 = 1/beta is the mode-weight mismatch
    # 1/2 log(0.5/w) + 1/2 log(0.5/(1-w)) (mode overlap ~ exp(-2 R^2 beta) negligible), and
    # perturbing the variance or rotating the means increases it (common random numbers).
    d, R, w, B = 64, 3.0, 0.8, 20000
    target = make_target(d, R, w)
    z = jax.random.normal(jax.random.key(2), (2, B, d))
    ms = np.asarray(target.mu_star)
    log_z = float(log_partition(target, beta))

    def kl(mu, var):
        return float(mc_loss(StudentState(jnp.asarray(mu), jnp.full((2,), var)), target, beta, z)) + log_z

    best = kl(np.stack([R * ms, -R * ms]), 1 / beta)
    expected = 0.5 * math.log(0.5 / w) + 0.5 * math.log(0.5 / (1 - w))
    # per-sample loss std is O(1) (entropy and potential fluctuate with d); 4-sigma MC tolerance
    per_sample_sd = math.sqrt(d / 2) * 1.5
    assert abs(best - expected) < 4 * per_sample_sd / math.sqrt(2 * B)
    for factor in (0.8, 1.25):
        assert kl(np.stack([R * ms, -R * ms]), factor / beta) > best
    rot = np.zeros(d)
    rot[1] = 1.0
    tilted = R * (0.95 * ms + math.sqrt(1 - 0.95**2) * rot)
    assert kl(np.stack([tilted, -R * ms]), 1 / beta) > best


def _run(n_seeds, offset=0, n_iter=30):
    target = make_target(24, 3.0, 0.8)
    ik, nk = seed_keys(7, n_seeds, offset)
    return simulate_seeds(ik, nk, target, Schedule("exp", 0.01, 20), n_iter, Hyper(0.05, 32))


def test_same_seed_is_bit_identical():
    a = _run(3)[1]
    b = _run(3)[1]
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_seed_results_do_not_depend_on_batching():
    full = _run(4)[1]
    for r in range(4):
        alone = _run(1, offset=r)[1]
        for x, y in zip(full, alone):
            # vmapped and unbatched XLA kernels may order float reductions differently:
            # agreement to float32 rounding, not necessarily bitwise
            np.testing.assert_allclose(np.asarray(x)[r], np.asarray(y)[0], rtol=2e-5, atol=2e-5)


def test_simulate_records_consistent_trajectory():
    target = make_target(24, 3.0, 0.8)
    sched = Schedule("exp", 0.05, 10)
    state0 = init_student(jax.random.key(0), 24, 3.0, 20.0)
    final, tr = simulate(jax.random.key(1), state0, target, sched, 15, Hyper(0.05, 16))
    assert tr.s.shape == (16,)
    m1, m2, s = summary_stats(state0, target)
    assert float(tr.m1[0]) == pytest.approx(float(m1))
    assert float(tr.s[-1]) == pytest.approx(float(summary_stats(final, target)[2]), abs=1e-6)
    np.testing.assert_allclose(np.asarray(tr.beta), np.asarray(sched(np.arange(16))))
    assert np.all(np.isfinite(np.asarray(tr.kl)))


def test_nan_run_is_flagged_not_classified():
    collapsed, failed = classify_collapse(jnp.array([0.5, -0.9, jnp.nan, jnp.inf]))
    assert list(np.asarray(failed)) == [False, False, True, True]
    assert list(np.asarray(collapsed)) == [True, False, False, False]
    # a genuinely diverging run: absurd learning rate blows the variance up to inf/NaN
    target = make_target(16, 3.0, 0.8)
    ik, nk = seed_keys(0, 2)
    _, tr = simulate_seeds(ik, nk, target, Schedule("constant"), 40, Hyper(lr=1e4, batch=8))
    s_final = np.asarray(tr.s[:, -1])
    c, f = classify_collapse(s_final)
    assert np.all(np.asarray(f) == ~np.isfinite(s_final))
    assert not np.any(np.asarray(c) & np.asarray(f))


def test_hyper_validation():
    with pytest.raises(ValueError, match="batch"):
        Hyper(0.05, 0)
    with pytest.raises(ValueError, match="lr"):
        Hyper(-1.0, 10)
    with pytest.raises(ValueError, match="sampling") as err:
        Hyper(sampling="x")
    assert "categorical" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="n_iter"):
        simulate(jax.random.key(0), init_student(jax.random.key(0), 4, 1.0, 1.0),
                 make_target(4), Schedule(), -3)


def test_hyper_sampling_default_and_hashable():
    """The default protocol is stratified, and Hyper stays a hashable static jit argument."""
    assert SAMPLINGS == ("stratified", "categorical")
    assert Hyper().sampling == "stratified"
    assert Hyper(0.05, 8) == Hyper(0.05, 8, "stratified")
    assert hash(Hyper(0.05, 8)) == hash(Hyper(0.05, 8, "stratified"))
    assert Hyper(0.05, 8, "categorical") != Hyper(0.05, 8)
    with pytest.raises(Exception):
        Hyper().sampling = "categorical"


def test_sample_labels_follow_the_weights():
    """Labels in {0, 1} with P(k = 1) = w2 = 1/2: the count over n = 100000 within 4 binomial
    SE (sqrt(n/4) = 158)."""
    n = 100_000
    labels = np.asarray(sample_labels(jax.random.key(0), n))
    assert labels.dtype == np.int32 and set(np.unique(labels)) == {0, 1}
    assert abs(labels.sum() - n / 2) < 4 * math.sqrt(n / 4)


def test_categorical_loss_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        d, B = 6, 64
        target = Target(mu_star=jnp.eye(d, dtype=jnp.float64)[0], R=2.0, w_star=0.7)
        k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        state = StudentState(jax.random.normal(k1, (2, d), dtype=jnp.float64),
                             jnp.array([0.7, 1.9], dtype=jnp.float64))
        z = jax.random.normal(k2, (B, d), dtype=jnp.float64)
        labels = sample_labels(k3, B)
        beta = 0.37
        grads = jax.grad(mc_loss_categorical)(state, target, beta, z, labels)
        flat, unravel = jax.flatten_util.ravel_pytree(state)
        f = lambda v: float(mc_loss_categorical(unravel(v), target, beta, z, labels))
        h = 1e-6
        fd = np.array([(f(flat.at[i].add(h)) - f(flat.at[i].add(-h))) / (2 * h)
                       for i in range(flat.size)])
        np.testing.assert_allclose(np.asarray(jax.flatten_util.ravel_pytree(grads)[0]), fd,
                                   rtol=1e-6, atol=1e-7)
        # with labels [0]*B + [1]*B (equal counts, as the weights) it is the stratified loss
        zz = z.reshape(2, B // 2, d)
        both = jnp.repeat(jnp.arange(2), B // 2)
        assert float(mc_loss_categorical(state, target, beta, z, both)) == pytest.approx(
            float(mc_loss(state, target, beta, zz)), rel=1e-12)


def test_categorical_and_stratified_exact_mean_gradient_agree():
    """Exact sampler: grad of mc_loss (B = 16 per component) and of the categorical loss (B = 32
    in total, labels drawn) have the same mean. N = 400 independent draws each at d = 8; every
    component of grad mu (2 x 8) and grad var (2) within 4 SE of the difference (SE from the
    spread over the draws; 18 comparisons -> family-wise false alarm ~ 1e-3 for normal means)."""
    d, B, N, beta = 8, 16, 400, 0.3
    target = make_target(d, 3.0, 0.8)
    state = StudentState(init_student(jax.random.key(4), d, 3.0, 1.0).mu,
                         jnp.array([2.0, 2.1]))

    def strat(k):
        g = jax.grad(mc_loss)(state, target, beta, jax.random.normal(k, (2, B, d)))
        return jnp.concatenate([g.mu.ravel(), g.var])

    def cat(k):
        k1, k2 = jax.random.split(k)
        g = jax.grad(mc_loss_categorical)(state, target, beta,
                                          jax.random.normal(k2, (2 * B, d)),
                                          sample_labels(k1, 2 * B))
        return jnp.concatenate([g.mu.ravel(), g.var])

    gs = np.asarray(jax.jit(jax.vmap(strat))(jax.random.split(jax.random.key(1), N)), float)
    gc = np.asarray(jax.jit(jax.vmap(cat))(jax.random.split(jax.random.key(2), N)), float)
    se = np.sqrt(gs.var(0, ddof=1) / N + gc.var(0, ddof=1) / N)
    z = np.abs(gs.mean(0) - gc.mean(0)) / se
    assert np.all(z < 4.0), z
    assert np.abs(gs.mean(0) / np.sqrt(gs.var(0, ddof=1) / N)).max() > 20   # not all zero


def test_categorical_simulate_runs():
    """simulate_seeds with the categorical protocol: finite trajectory and KL, the means stay
    on the sphere, same keys -> identical numbers."""
    target = make_target(24, 3.0, 0.8)
    ik, nk = seed_keys(7, 2)
    hyper = Hyper(0.05, 32, "categorical")
    f1, t1 = simulate_seeds(ik, nk, target, Schedule("exp", 0.01, 20), 25, hyper)
    f2, t2 = simulate_seeds(ik, nk, target, Schedule("exp", 0.01, 20), 25, hyper)
    assert np.all(np.isfinite(np.asarray(t1.kl))) and np.all(np.isfinite(np.asarray(t1.s)))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(f1.mu), axis=-1), 3.0, rtol=1e-5)
    assert np.array_equal(np.asarray(t1.s), np.asarray(t2.s))
