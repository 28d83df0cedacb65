"""Validation of the reduced O(B + d) sampler against the exact O(B d) sampler of student.py.

Three levels: (1) sample by sample, with shared noise, the reduced loss and gradients equal the
exact ones (deterministic identity, float tolerance); (2) the two approximations of the reduced
sampler (Wishart law of the perpendicular Gram, Wilson-Hilferty chi-square) and the resulting
one-step law of the statistics agree with the exact ones within Monte-Carlo standard errors;
(3) collapse rates agree within binomial error on two cells.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from annealvi_lib.models import reduced as rd
from annealvi_lib.models import reduced_grads as rgrad
from annealvi_lib.models import reduced_noise as rnoise
from annealvi_lib.models import student as st
from annealvi_lib.models.schedules import Schedule
from annealvi_lib.models.targets import make_target

D_TEST = 64
R = 3.0
W_STAR = 0.8


def _gram_schmidt(vectors):
    out = []
    for v in vectors:
        w = v - sum(np.dot(v, o) * o for o in out)
        out.append(w / np.linalg.norm(w))
    return np.array(out)


def _student_at(stats: rd.ReducedState, d: int) -> st.StudentState:
    """A d-dimensional student whose statistics are ``stats`` (mu* = e1)."""
    mu3 = rgrad.span_coords(stats.m, stats.s, R)
    return st.StudentState(mu=jnp.zeros((2, d)).at[:, :3].set(mu3), var=stats.var)


STATE = rd.ReducedState(m=jnp.array([0.3, -0.2]), s=jnp.array(-0.5), var=jnp.array([2.0, 3.0]))


def _split_noise(state, z, d):
    """Project d-dim noise on the span basis: in-span coordinates, perpendicular parts, r^2."""
    mu = np.asarray(state.mu, float)
    e1 = np.zeros(d)
    e1[0] = 1.0
    basis = _gram_schmidt([e1, mu[0], mu[1]])
    zn = np.asarray(z, float)
    zs = zn @ basis.T
    zp = zn - zs @ basis
    return basis, zs, zp, (zp**2).sum(-1)


def test_span_coords_reproduce_statistics():
    for m, s in [((0.3, -0.2), -0.5), ((0.9, -0.9), -1.0), ((1.0, 0.4), 0.4), ((0.0, 0.0), 0.0)]:
        mu = np.asarray(rgrad.span_coords(jnp.array(m), jnp.array(s), R), float) / R
        assert np.allclose(np.linalg.norm(mu, axis=1), 1.0, atol=1e-3)
        assert np.allclose(mu[:, 0], m, atol=1e-6)
        assert abs(mu[0] @ mu[1] - s) < 1e-5
        assert np.all(np.isfinite(mu))


@pytest.mark.parametrize("beta", [0.05, 1.0])
def test_reduced_gradients_equal_exact_with_shared_noise(beta):
    """Same noise -> same loss, in-span gradient, variance gradient and perpendicular gradient."""
    d, B = D_TEST, 32
    target = make_target(d, R, W_STAR)
    mu = jax.random.normal(jax.random.key(3), (2, d))
    state = st.StudentState(mu=R * mu / jnp.linalg.norm(mu, axis=1, keepdims=True),
                            var=jnp.array([2.0, 1.3]))
    z = jax.random.normal(jax.random.key(5), (2, B, d))
    loss, grads = jax.jit(jax.value_and_grad(st.mc_loss))(state, target, beta, z)
    basis, zs, zp, r2 = _split_noise(state, z, d)
    stats = jax.jit(rd.reduced_from_student)(state, target)
    mu3 = jax.jit(rgrad.span_coords)(stats.m, stats.s, R)
    # the coordinates are those of the means in the Gram-Schmidt basis (mu*, mu1, mu2)
    assert np.allclose(np.asarray(mu3), np.asarray(state.mu, float) @ basis.T, atol=2e-6 * R)
    g = np.asarray(grads.mu, float)
    g_perp = g - (g @ basis.T) @ basis
    zs32, r232 = jnp.asarray(zs, jnp.float32), jnp.asarray(r2, jnp.float32)
    for fn in (rgrad.reduced_grads, rgrad.reduced_grads_fast):
        out = jax.jit(fn, static_argnums=7)(mu3, state.var, zs32, r232, beta, R, W_STAR, d)
        l_red, g_mu, g_var, a = out[:4]
        # float32 round-off of sums of O(B) terms of size O(d): relative 1e-5
        assert abs(float(l_red) - float(loss)) <= 1e-5 * max(1.0, abs(float(loss)))
        scale = np.abs(g).max()
        assert np.allclose(np.asarray(g_mu), g @ basis.T, atol=1e-5 * scale)
        assert np.allclose(np.asarray(g_var), np.asarray(grads.var), rtol=1e-4, atol=1e-5)
        v = np.einsum("jkb,kbd->jd", np.asarray(a, float), zp)
        assert np.abs(v - g_perp).max() <= 1e-5 * np.abs(g_perp).max()
    _, _, _, a, S = rgrad.reduced_grads_fast(mu3, state.var, zs32, r232, beta, R, W_STAR, d)
    C = (np.asarray(a, float) * np.sqrt(r2)[None]).reshape(2, -1)
    assert np.allclose(np.asarray(S), C @ C.T, rtol=1e-4)


def test_gradient_expectations_match_exact():
    """(a) Monte-Carlo means of the in-span and variance gradients, reduced vs exact sampler.

    N independent batches each; |mean_exact - mean_reduced| <= 4 * SE (SE from the spread over
    batches, 8 quantities compared: family-wise false-alarm ~ 5e-4).
    """
    d, B, N, beta = D_TEST, 256, 200, 0.3
    target = make_target(d, R, W_STAR)
    full = _student_at(STATE, d)
    mu3 = rgrad.span_coords(STATE.m, STATE.s, R)

    def exact(k):
        z = jax.random.normal(k, (2, B, d))
        gr = jax.grad(st.mc_loss)(full, target, beta, z)
        return jnp.concatenate([gr.mu[:, :3].ravel(), gr.var])

    def reduced(k):
        noise = rnoise.draw_step_noise(k, st.Hyper(0.05, B), d)
        M = rgrad.noise_sums(mu3, STATE.var, noise, R, W_STAR, d)
        g_mu, g_var, _ = rgrad.grads_from_sums(M, mu3, STATE.var, beta, R, d, 2 * B)
        return jnp.concatenate([g_mu.ravel(), g_var])

    ge = np.asarray(jax.jit(jax.vmap(exact))(jax.random.split(jax.random.key(10), N)), float)
    gr = np.asarray(jax.jit(jax.vmap(reduced))(jax.random.split(jax.random.key(11), N)), float)
    se = np.sqrt(ge.var(0, ddof=1) / N + gr.var(0, ddof=1) / N)
    z = np.abs(ge.mean(0) - gr.mean(0)) / se
    assert np.all(z < 4.0), z


def test_chi2_sampler_moments():
    """Wilson-Hilferty chi^2_D (D >= 30) and gamma chi^2_D (small D): mean D and variance 2D,
    within 4 SE (SE of the variance from the exact 4th central moment 12 D^2 + 48 D)."""
    n = 200_000
    for dof in (10, 61, 509):
        x = np.asarray(rnoise.sample_chi2(jax.random.key(dof), dof, (n,)), float)
        assert abs(x.mean() - dof) < 4 * math.sqrt(2 * dof / n)
        m4 = 12.0 * dof**2 + 48.0 * dof
        assert abs(x.var() - 2 * dof) < 4 * math.sqrt((m4 - 4.0 * dof**2) / n)


def _se_var(x):
    """Standard error of the sample variance (from the sample 4th central moment)."""
    c = x - x.mean(0)
    return np.sqrt((np.mean(c**4, 0) - np.mean(c**2, 0) ** 2) / len(x))


def test_wishart_gram_matches_sphere_law():
    """The Gram of v_j = sum_b C_jb n_b (n_b independent uniform unit vectors in D dims) against
    the sampled Wishart_2(D, S/D), S = C C^T.

    Means: both equal S (4 SE). Variances: hand-derived, Var<n_b, n_b'> = 1/D gives for the
    sphere law Var G_00 = (2/D)(S_00^2 - sum_b C_0b^4) and
    Var G_01 = (S_00 S_11 + S_01^2 - 2 sum_b C_0b^2 C_1b^2)/D, while the Wishart has
    2 S_00^2/D and (S_00 S_11 + S_01^2)/D: the stated O(1/B) relative difference. Each sample
    variance is checked against its own formula within 4 SE.
    """
    D, nb, N = 61, 24, 20_000
    rng = np.random.default_rng(0)
    C = rng.normal(size=(2, nb)) * np.array([[1.0], [0.5]]) + 0.3
    S = C @ C.T
    n = rng.normal(size=(N, nb, D))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    v = np.einsum("jb,nbd->njd", C, n)
    exact = np.einsum("njd,nkd->njk", v, v)
    keys = jax.random.split(jax.random.key(4), N)

    def wish(k):
        bart = rnoise.draw_step_noise(k, st.Hyper(0.05, 1), D + 3).bartlett
        V = rd.perp_factor(jnp.asarray(S, jnp.float32), bart)
        return V @ V.T

    wis = np.asarray(jax.jit(jax.vmap(wish))(keys), float)
    c4 = (C[0] ** 2 * C[1] ** 2).sum()
    predicted = {
        (0, 0): (2 * (S[0, 0] ** 2 - (C[0] ** 4).sum()) / D, 2 * S[0, 0] ** 2 / D),
        (1, 1): (2 * (S[1, 1] ** 2 - (C[1] ** 4).sum()) / D, 2 * S[1, 1] ** 2 / D),
        (0, 1): ((S[0, 0] * S[1, 1] + S[0, 1] ** 2 - 2 * c4) / D,
                 (S[0, 0] * S[1, 1] + S[0, 1] ** 2) / D),
    }
    for (i, j), (var_sphere, var_wishart) in predicted.items():
        a, b = exact[:, i, j], wis[:, i, j]
        assert abs(a.mean() - S[i, j]) < 4 * a.std() / math.sqrt(N)
        assert abs(b.mean() - S[i, j]) < 4 * b.std() / math.sqrt(N)
        assert abs(a.var() - var_sphere) < 4 * _se_var(a)
        assert abs(b.var() - var_wishart) < 4 * _se_var(b)
        assert 1.0 - var_sphere / var_wishart < 3.0 / nb     # the O(1/B) relative difference


HOT_STATE = rd.ReducedState(m=jnp.array([0.3, -0.2]), s=jnp.array(-0.5),
                            var=jnp.array([1000.0, 1200.0]))


def _check_one_step_law(state, beta, hyper, N=6000):
    """One reduced step against one exact step from ``state`` (N independent keys each): the
    means and variances of (m1, m2, s, var1, var2) agree within 4 SE, and the step is not
    trivial (the mean drift of m1 or s is many SE away from zero)."""
    target = make_target(D_TEST, R, W_STAR)
    full = _student_at(state, D_TEST)
    ex = jax.jit(jax.vmap(lambda k: rd.reduced_from_student(
        st.jko_step(full, k, target, beta, hyper)[0], target)))(
        jax.random.split(jax.random.key(1), N))
    red = jax.jit(jax.vmap(lambda k: rd.reduced_step(state, k, target, beta, hyper)[0]))(
        jax.random.split(jax.random.key(2), N))

    def cols(x):
        return np.stack([np.asarray(x.m[:, 0]), np.asarray(x.m[:, 1]), np.asarray(x.s),
                         np.asarray(x.var[:, 0]), np.asarray(x.var[:, 1])], 1).astype(float)

    a, b = cols(ex), cols(red)
    se_mean = np.sqrt(a.var(0) / N + b.var(0) / N)
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * se_mean)
    assert np.all(np.abs(a.var(0) - b.var(0)) < 4 * np.hypot(_se_var(a), _se_var(b)))
    drift = np.abs(b.mean(0)[[0, 2]] - np.array([0.3, -0.5])) / se_mean[[0, 2]]
    assert drift.max() > 10


@pytest.mark.parametrize("state,beta", [(STATE, 0.3), (HOT_STATE, 1e-3)])
def test_one_step_law_matches_exact(state, beta):
    """(b) The one-step update of (m1, m2, s, var1, var2) from a fixed state: mean and variance
    agree with the exact sampler's within 4 SE (SE of a variance from the sample 4th moment;
    10 comparisons -> family-wise false alarm ~ 6e-4). Small B = 16 makes the O(1/B) Wishart
    term as large as it gets in practice; the hot state (beta = 1e-3, var ~ 1/beta) is where the
    perpendicular gradient noise dominates the step (s moves by ~0.17 per step)."""
    _check_one_step_law(state, beta, st.Hyper(0.05, 16))


@pytest.mark.parametrize("schedule,n_iter", [
    (Schedule("constant", 1.0, 1.0), 80),
    (Schedule("exp", 0.01, 60.0), 140),
])
def test_collapse_rates_match_exact(schedule, n_iter):
    """(c) Collapse rates of the two samplers within binomial error:
    |p1 - p2| <= 3 sqrt(p1 (1-p1)/n + p2 (1-p2)/n) (cells chosen with intermediate p, ~0.4-0.65,
    at d = 64), with identical initial statistics (same init keys). Also checks the trajectory
    contract and determinism."""
    d, B, S = D_TEST, 64, 128
    target = make_target(d, R, W_STAR)
    hyper = st.Hyper(0.05, B)
    ik, nk = st.seed_keys(7, S)
    fe, te = st.simulate_seeds(ik, nk, target, schedule, n_iter, hyper, record=True)
    fr, tr = rd.simulate_reduced_seeds(ik, nk, target, schedule, n_iter, hyper, record=True)
    s_exact = te.s[:, -1]
    # identical initial statistics (same init keys), same beta and var0 conventions
    for f in ("m1", "m2", "s", "var1", "var2", "beta"):
        assert np.allclose(np.asarray(getattr(te, f)[:, 0]), np.asarray(getattr(tr, f)[:, 0]),
                           rtol=1e-6, atol=1e-6), f
    assert np.array_equal(np.asarray(tr.s[:, -1]), np.asarray(fr.s))
    assert np.all(np.isfinite(np.asarray(tr.kl)))
    # same keys -> identical numbers
    fr2, _ = rd.simulate_reduced_seeds(ik, nk, target, schedule, n_iter, hyper, record=True)
    assert np.array_equal(np.asarray(fr.s), np.asarray(fr2.s))
    ce, fail_e = st.classify_collapse(s_exact)
    cr, fail_r = st.classify_collapse(fr.s)
    assert not bool(fail_e.any()) and not bool(fail_r.any())
    p1, p2 = float(ce.mean()), float(cr.mean())
    assert 0.1 < p1 < 0.9
    assert abs(p1 - p2) <= 3 * math.sqrt(p1 * (1 - p1) / S + p2 * (1 - p2) / S)


def test_nonfinite_run_is_failed():
    target = make_target(D_TEST, R, W_STAR)
    bad = rd.ReducedState(m=jnp.array([0.1, jnp.nan]), s=jnp.array(0.0), var=jnp.ones(2))
    final, _ = rd.simulate_reduced(jax.random.key(0), bad, target, Schedule("constant"), 3,
                                   st.Hyper(0.05, 8), record=False)
    collapsed, failed = st.classify_collapse(final.s)
    assert bool(failed) and not bool(collapsed)


def test_invalid_inputs_raise():
    ik, nk = st.seed_keys(0, 2)
    with pytest.raises(ValueError, match="d"):
        rd.simulate_reduced_seeds(ik, nk, make_target(4, R, W_STAR), Schedule(), 2)
    with pytest.raises(ValueError, match="n_iter"):
        rd.simulate_reduced_seeds(ik, nk, make_target(D_TEST, R, W_STAR), Schedule(), -1)
    with pytest.raises(ValueError, match="var0"):
        rd.simulate_reduced_seeds(ik, nk, make_target(D_TEST, R, W_STAR), Schedule(), 2,
                                  var0=0.0)


def test_betas_entry_point_matches_static_schedule():
    """simulate_reduced_betas (traced schedule, per-run paths) gives the same numbers as
    simulate_reduced_seeds with the same keys, and mixes cells (different beta paths) in one
    batch."""
    target = make_target(D_TEST, R, W_STAR)
    hyper = st.Hyper(0.05, 8)
    ik, nk = st.seed_keys(3, 4)
    sch_a, sch_b = Schedule("exp", 0.1, 10.0), Schedule("exp", 0.02, 15.0)
    steps = jnp.arange(13)
    _, ta = rd.simulate_reduced_seeds(ik, nk, target, sch_a, 12, hyper)
    betas = jnp.stack([sch_a(steps), sch_a(steps), sch_b(steps), sch_b(steps)])
    _, tm = rd.simulate_reduced_betas(ik, nk, target, betas, hyper)
    assert np.allclose(np.asarray(tm.s[:2]), np.asarray(ta.s[:2]), atol=1e-6)
    assert np.allclose(np.asarray(tm.kl[:2]), np.asarray(ta.kl[:2]), rtol=1e-5)
    assert np.array_equal(np.asarray(tm.beta), np.asarray(betas))
    assert np.allclose(np.asarray(tm.var1[2:, 0]), 1.0 / 0.02, rtol=1e-6)   # var0 = 1/beta(0)
    # another call width is another compiled program: equal to float32 round-off only
    _, tc = rd.simulate_reduced_betas(ik, nk, target, betas, hyper, chunk=3)
    np.testing.assert_allclose(np.asarray(tc.s), np.asarray(tm.s), atol=1e-5)
    # with one width, a run's numbers are those of the same program on the same inputs, bit for
    # bit, whatever the number of runs: 4 runs in calls of 2 == two calls of 2 runs each, and a
    # padded last call [3, 3] == a call of run 3 twice
    _, t4 = rd.simulate_reduced_betas(ik, nk, target, betas, hyper, chunk=2)
    _, t01 = rd.simulate_reduced_betas(ik[:2], nk[:2], target, betas[:2], hyper, chunk=2)
    _, t23 = rd.simulate_reduced_betas(ik[2:], nk[2:], target, betas[2:], hyper, chunk=2)
    assert np.array_equal(np.asarray(t4.s), np.concatenate([t01.s, t23.s]))
    _, t3 = rd.simulate_reduced_betas(ik[:3], nk[:3], target, betas[:3], hyper, chunk=2)
    _, t33 = rd.simulate_reduced_betas(ik[np.array([2, 2])], nk[np.array([2, 2])], target, betas[np.array([2, 2])], hyper,
                                       chunk=2)
    assert np.array_equal(np.asarray(t3.s[2]), np.asarray(t33.s[0]))
    assert np.array_equal(np.asarray(t3.s[:2]), np.asarray(t01.s))
    with pytest.raises(ValueError, match="betas"):
        rd.simulate_reduced_betas(ik, nk, target, jnp.zeros(5), hyper)
    with pytest.raises(ValueError, match="betas"):
        rd.simulate_reduced_betas(ik, nk, target, jnp.ones((3, 5)), hyper)


# --------------------------------------------------------------------------------------------
# categorical protocol (the official code's): B samples in total, labels drawn from the weights
# --------------------------------------------------------------------------------------------

def _stratified_as_labelled(zs, r2):
    """Stratified noise (zs (3, 2, B), r2 (2, B)) as one labelled array of 2B samples:
    labels [0]*B + [1]*B (one-hot (2, 2B)), zs (3, 2B), r2 (2B,)."""
    B = r2.shape[-1]
    onehot = jax.nn.one_hot(jnp.repeat(jnp.arange(2), B), 2, axis=0)
    return onehot, zs.reshape(3, 2 * B), r2.reshape(-1)


@pytest.mark.parametrize("beta", [0.05, 0.3, 1.0])
def test_label_general_grads_reproduce_stratified(beta):
    """With labels [0]*B + [1]*B and per-sample weight 1/(2B) the label-general closed form is
    the stratified one, output by output (float32 round-off of reordered sums: the loss and
    gradients are sums of O(B) terms of size O(d), relative 1e-5 of the largest entry)."""
    d, B = D_TEST, 32
    mu3 = rgrad.span_coords(STATE.m, STATE.s, R)
    k1, k2 = jax.random.split(jax.random.key(0))
    zs = jax.random.normal(k1, (3, 2, B))
    r2 = rnoise.sample_chi2(k2, d - 3, (2, B))
    ref = jax.jit(rgrad._fast_grads_soa, static_argnums=7)(mu3, STATE.var, zs, r2, beta, R,
                                                        W_STAR, d)
    onehot, zs_l, r2_l = _stratified_as_labelled(zs, r2)
    out = jax.jit(rgrad._fast_grads_labels, static_argnums=9)(mu3, STATE.var, zs_l, r2_l, onehot,
                                                           1.0 / (2 * B), beta, R, W_STAR, d)
    for name, a, b in zip(("loss", "g_mu", "g_var", "a", "S"), ref, out):
        a = np.asarray(a, float).reshape(np.shape(b))
        np.testing.assert_allclose(np.asarray(b, float), a, rtol=0,
                                   atol=1e-5 * max(1.0, np.abs(a).max()), err_msg=name)


@pytest.mark.parametrize("beta", [0.05, 1.0])
def test_categorical_reduced_gradients_equal_exact_with_shared_noise(beta):
    """Categorical protocol, same noise and labels: the reduced closed form equals the exact
    sampler's loss and gradients sample by sample (mirror of the stratified test above)."""
    d, B = D_TEST, 48
    target = make_target(d, R, W_STAR)
    mu = jax.random.normal(jax.random.key(3), (2, d))
    state = st.StudentState(mu=R * mu / jnp.linalg.norm(mu, axis=1, keepdims=True),
                            var=jnp.array([2.0, 1.3]))
    key = jax.random.key(5)
    z, labels = st._categorical_noise(key, B, d)
    assert 0 < int(labels.sum()) < B                       # both components are sampled
    loss, grads = jax.jit(jax.value_and_grad(st.mc_loss_categorical))(state, target, beta, z,
                                                                      labels)
    basis, zs, zp, r2 = _split_noise(state, z, d)
    stats = jax.jit(rd.reduced_from_student)(state, target)
    mu3 = jax.jit(rgrad.span_coords)(stats.m, stats.s, R)
    out = jax.jit(rgrad.reduced_grads_labels, static_argnums=8)(
        mu3, state.var, jnp.asarray(zs, jnp.float32), jnp.asarray(r2, jnp.float32), labels,
        beta, R, W_STAR, d)
    l_red, g_mu, g_var, a, S = out
    # float32 round-off of sums of O(B) terms of size O(d): relative 1e-5
    assert abs(float(l_red) - float(loss)) <= 1e-5 * max(1.0, abs(float(loss)))
    g = np.asarray(grads.mu, float)
    g_perp = g - (g @ basis.T) @ basis
    assert np.allclose(np.asarray(g_mu), g @ basis.T, atol=1e-5 * np.abs(g).max())
    assert np.allclose(np.asarray(g_var), np.asarray(grads.var), rtol=1e-4, atol=1e-5)
    v = np.asarray(a, float) @ zp                          # sum_b a[j, b] z_perp_b
    assert np.abs(v - g_perp).max() <= 1e-5 * np.abs(g_perp).max()
    C = np.asarray(a, float) * np.sqrt(r2)[None]
    assert np.allclose(np.asarray(S), C @ C.T, rtol=1e-4)


def test_categorical_and_stratified_have_the_same_mean_gradient():
    """Reduced sampler: the two protocols estimate the same gradient. Means over N = 400
    independent batches (B = 64 in total against 32 per component, the same number of samples)
    of the in-span gradients g_mu (2 x 3) and g_var (2): each difference within 4 SE of the
    difference (SE from the spread over the draws; 8 comparisons -> family-wise false alarm
    ~ 5e-4 for normal means). The protocols differ in noise: their spreads are not equal."""
    d, N, beta = D_TEST, 400, 0.3
    state = rd.ReducedState(m=jnp.array([0.3, -0.2]), s=jnp.array(-0.5),
                            var=jnp.array([2.0, 2.1]))
    target = make_target(d, R, W_STAR)
    mu3 = rgrad.span_coords(state.m, state.s, R)

    def grads(sampling, batch):
        hyper = st.Hyper(0.05, batch, sampling)

        def one(k):
            noise = rnoise.draw_step_noise(k, hyper, d)
            M = rgrad.noise_sums(mu3, state.var, noise, R, W_STAR, d)
            g_mu, g_var, _ = rgrad.grads_from_sums(M, mu3, state.var, beta, R, d, rnoise.n_samples(hyper))
            return jnp.concatenate([g_mu.ravel(), g_var])

        keys = jax.random.split(jax.random.key(21 if sampling == "stratified" else 22), N)
        return np.asarray(jax.jit(jax.vmap(one))(keys), float)

    gs, gc = grads("stratified", 32), grads("categorical", 64)
    se = np.sqrt(gs.var(0, ddof=1) / N + gc.var(0, ddof=1) / N)
    z = np.abs(gs.mean(0) - gc.mean(0)) / se
    assert np.all(z < 4.0), z
    # the check has power: the mean gradient is far from zero in SE units
    assert np.abs(gs.mean(0) / np.sqrt(gs.var(0, ddof=1) / N)).max() > 20


@pytest.mark.parametrize("state,beta", [(STATE, 0.3), (HOT_STATE, 1e-3)])
def test_categorical_one_step_law_matches_exact(state, beta):
    """Categorical protocol: the reduced one-step update of (m1, m2, s, var1, var2) agrees in
    mean and variance with the exact sampler's categorical step within 4 SE (as the stratified
    test above; B = 32 in total, the same number of samples as B = 16 per component there)."""
    _check_one_step_law(state, beta, st.Hyper(0.05, 32, "categorical"))


def test_categorical_runs_are_deterministic_and_small_d_works():
    """simulate_reduced_betas with the categorical protocol: finite trajectories, same keys ->
    identical numbers, a different protocol -> different numbers (stratified keeps its own
    noise), and the exact chi-square branch (D < 30) runs too."""
    ik, nk = st.seed_keys(3, 4)
    for d in (D_TEST, 12):
        target = make_target(d, R, W_STAR)
        betas = Schedule("exp", 0.02, 15.0)(jnp.arange(21))
        cat = st.Hyper(0.05, 16, "categorical")
        _, t1 = rd.simulate_reduced_betas(ik, nk, target, betas, cat)
        _, t2 = rd.simulate_reduced_betas(ik, nk, target, betas, cat)
        _, ts = rd.simulate_reduced_betas(ik, nk, target, betas, st.Hyper(0.05, 16))
        assert np.all(np.isfinite(np.asarray(t1.kl))) and np.all(np.isfinite(np.asarray(t1.s)))
        assert np.array_equal(np.asarray(t1.s), np.asarray(t2.s))
        assert np.array_equal(np.asarray(t1.s[:, 0]), np.asarray(ts.s[:, 0]))   # same init
        assert not np.array_equal(np.asarray(t1.s[:, -1]), np.asarray(ts.s[:, -1]))


# --------------------------------------------------------------------------------------------
# the sampler's noise and its closed-form sums
# --------------------------------------------------------------------------------------------

SUM_CASES = [((0.3, -0.5), 0.1, (1.1, 0.9), 0.3, "categorical"),
             ((0.9, 0.8), 0.7, (2.0, 1.3), 0.05, "stratified"),
             ((0.1, -0.2), -0.5, (1000.0, 1200.0), 1e-3, "categorical"),
             ((0.99, 0.98), 0.97, (0.6, 0.61), 1.0, "stratified")]


@pytest.mark.parametrize("case", range(len(SUM_CASES)))
def test_gradient_sums_equal_the_per_sample_closed_form(case):
    """The sampler's 6 x 8 sums (:func:`noise_sums`, :func:`grads_from_sums`, :func:`step_loss`)
    equal the per-sample closed form (:func:`_fast_grads_labels`, itself checked against the
    exact sampler above) on the same noise, output by output: float32 round-off of reordered
    sums, relative 2e-5 of the largest entry. Cases span balanced and saturated
    responsibilities, hot and cold states, both protocols."""
    m, s, var, beta, sampling = SUM_CASES[case]
    d = D_TEST
    hyper = st.Hyper(0.05, 300, sampling)
    noise = rnoise.draw_step_noise(jax.random.key(case), hyper, d)
    mu = rgrad.span_coords(jnp.array(m), jnp.array(s), R)
    var = jnp.array(var)
    n = rnoise.n_samples(hyper)
    assert noise.r2.shape == (n,) and noise.z.shape == (3, n)
    own0 = (jnp.arange(n) < noise.n0).astype(jnp.float32)
    ref = rgrad._fast_grads_labels(mu, var, noise.z, noise.r2, jnp.stack([own0, 1 - own0]),
                                1.0 / n, beta, R, W_STAR, d)
    M = rgrad.noise_sums(mu, var, noise, R, W_STAR, d)
    g_mu, g_var, S = rgrad.grads_from_sums(M, mu, var, beta, R, d, n)
    loss = rgrad.step_loss(mu, var, noise, beta, R, W_STAR, d)
    for name, a, b in (("loss", ref[0], loss), ("g_mu", ref[1], g_mu), ("g_var", ref[2], g_var),
                       ("S", ref[4], S)):
        a, b = np.asarray(a, float), np.asarray(b, float)
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-5 * np.abs(a).max(), err_msg=name)


def test_box_muller_normals_have_the_normal_law():
    """:func:`normal_pairs` on 2 x 10^6 pairs (radius word, 24-bit angle) of threefry bits: mean, variance, kurtosis, the
    tail mass beyond 2 and 3, the correlation of the pair's squares (zero only if the radius
    and angle are independent with the right laws; the plain correlation vanishes for any
    radial law) and a Kolmogorov-Smirnov distance, each against N(0, 1) within 4 SE (KS: the
    99.99% point of sqrt(n) D is 2.23 < 4)."""
    n = 2_000_000
    bits = jax.random.bits(jax.random.key(7), (2, n), jnp.uint32)
    a, b = (np.asarray(x, float) for x in rnoise.normal_pairs(bits[0], bits[1] & 0xFFFFFF))
    z = np.concatenate([a, b])
    m = z.size
    assert abs(z.mean()) < 4 / math.sqrt(m)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / m)
    assert abs(np.mean(z ** 4) - 3) < 4 * math.sqrt(96 / m)
    for t in (2.0, 3.0):
        p = math.erfc(t / math.sqrt(2))
        assert abs(np.mean(np.abs(z) > t) - p) < 4 * math.sqrt(p * (1 - p) / m)
    assert abs(np.corrcoef(a * a, b * b)[0, 1]) < 4 / math.sqrt(n)
    zs = np.sort(z[:200_000])
    cdf = 0.5 * (1 + np.vectorize(math.erf)(zs / math.sqrt(2)))
    k = np.arange(1, zs.size + 1) / zs.size
    assert np.abs(cdf - k).max() < 4 / math.sqrt(zs.size)


def test_drawn_noise_has_independent_normal_coordinates():
    """The noise as :func:`draw_step_noise` lays it out (three words per sample shared by two
    pairs): z1, z2, z3 and the Wilson-Hilferty normal behind r^2 each have mean 0, variance 1
    and kurtosis 3, and all six correlations of their squares vanish (dependence through the
    shared words would show there), within 4 SE; r^2 has the chi^2_D mean and variance."""
    d, n_steps, B = 64, 400, 512
    D = d - 3
    keys = jax.random.split(jax.random.key(12), n_steps)
    noise = jax.vmap(lambda k: rnoise.draw_step_noise(k, st.Hyper(0.05, B), d))(keys)
    z = np.asarray(noise.z, float).transpose(1, 0, 2).reshape(3, -1)
    r2 = np.asarray(noise.r2, float).ravel()
    a = 2.0 / (9.0 * D)
    xi = ((r2 / D) ** (1 / 3) - 1 + a) / math.sqrt(a)           # inverse Wilson-Hilferty
    cols = np.vstack([z, xi])
    m = cols.shape[1]
    assert np.all(np.abs(cols.mean(1)) < 4 / math.sqrt(m))
    assert np.all(np.abs(cols.var(1) - 1) < 4 * math.sqrt(2 / m))
    assert np.all(np.abs(np.mean(cols ** 4, 1) - 3) < 4 * math.sqrt(96 / m))
    sq = np.corrcoef(cols ** 2)
    assert np.abs(sq[np.triu_indices(4, 1)]).max() < 4 / math.sqrt(m)
    assert abs(r2.mean() - D) < 4 * math.sqrt(2 * D / m)


def test_categorical_component_count_is_binomial():
    """The categorical protocol's count n0 over 4000 steps of N = 100 samples (not a multiple
    of 32: the last word is masked): mean N/2 and variance N/4 within 4 SE; stratified gives
    exactly B per component."""
    keys = jax.random.split(jax.random.key(8), 4000)
    for n in (100, 20):                    # several words with a masked last one; one word
        n0 = np.asarray(jax.vmap(lambda k: rnoise.draw_step_noise(
            k, st.Hyper(0.05, n, "categorical"), D_TEST).n0)(keys), float)
        assert abs(n0.mean() - n / 2) < 4 * math.sqrt(n / 4 / n0.size)
        assert abs(n0.var() - n / 4) < 4 * _se_var(n0[:, None])[0]
        assert n0.min() >= 0 and n0.max() <= n
    strat = rnoise.draw_step_noise(keys[0], st.Hyper(0.05, 100, "stratified"), D_TEST)
    assert int(strat.n0) == 100 and strat.r2.shape == (200,)


@pytest.mark.parametrize("sampling", ["stratified", "categorical"])
def test_runner_applies_reduced_step_with_the_same_keys(sampling):
    """The runners draw each step's noise one iteration ahead; the chain is the same map with
    the same keys as repeated :func:`reduced_step` (different compiled programs: equal to
    float32 round-off, relative 1e-4 after 12 steps), and the variance range is the one
    visited."""
    d, n_iter = D_TEST, 12
    target = make_target(d, R, W_STAR)
    hyper = st.Hyper(0.05, 64, sampling)
    # a non-monotone path, so that the variance range is not just (final, initial)
    betas = jnp.array([0.2, 0.9, 0.1, 1.0, 0.05, 0.6, 0.3, 1.0, 0.15, 0.8, 0.4, 0.9, 1.0])
    key = jax.random.key(9)
    state0 = rd.init_reduced(jax.random.key(10), target, 5.0)
    final, lo, hi = jax.jit(rd.run_with_range, static_argnames="hyper")(key, state0, target,
                                                                         betas, hyper)
    keys = jax.random.split(key, n_iter + 1)
    step = jax.jit(rd.reduced_step, static_argnames="hyper")
    state, vars_ = state0, [np.asarray(state0.var)]
    for t in range(n_iter):
        state, _ = step(state, keys[t], target, betas[t], hyper)
        vars_.append(np.asarray(state.var))
    for a, b in ((final.m, state.m), (final.s, state.s), (final.var, state.var)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([float(lo), float(hi)], [np.min(vars_), np.max(vars_)],
                               rtol=1e-4)
    v = np.array(vars_)
    assert v.min() < min(v[0].min(), v[-1].min()) or v.max() > max(v[0].max(), v[-1].max())
    # the recording runner: same keys, same final state, trajectory of n_iter + 1 points
    final_r, traj = jax.jit(rd._run, static_argnames=("hyper", "record"))(
        key, state0, target, betas, hyper, True)
    np.testing.assert_allclose(np.asarray(final_r.var), np.asarray(final.var), rtol=1e-5)
    assert traj.var1.shape == (n_iter + 1,) and np.all(np.isfinite(np.asarray(traj.kl)))
    assert float(traj.var1[0]) == float(state0.var[0])
    # n_iter = 0: no step, the initial state and its range
    f0, lo0, hi0 = rd.run_with_range(key, state0, target, betas[:1], hyper)
    assert np.array_equal(np.asarray(f0.var), np.asarray(state0.var))
    assert float(lo0) == float(state0.var.min()) and float(hi0) == float(state0.var.max())
