"""Collapse probabilities beyond the closed form: the ODE-propagated probability and the
finite-batch (stochastic) theory.

:func:`ode_collapse_probability` integrates the expected discrete JKO
map (the ODE of DESIGN 4.1 with the renormalisation done exactly) with or without variance lag
from exact samples of the initial statistics, for a whole grid of cells in one vmapped scan;
:func:`stochastic_collapse_probability` adds the finite-batch gradient noise to the same map
(O(1) work per run and step, independent of B and d).

Both propagate many initial conditions (exact draws of the initial statistics, DESIGN 4.3) for a
whole grid of cells in one vmapped ``lax.scan`` under ``jit``; a run is classified when its
overlap has settled (see :data:`annealvi_lib.metrics.SETTLED_S`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._rng import fast_threefry
from .._validate import check_choice, check_int_at_least, check_open_unit, check_positive
from ..config import SAMPLINGS
from ..models.schedules import SCHEDULES
from . import ode as theory
from .collapse import _arr, _cell_paths

__all__ = ["OdeCollapse", "ode_collapse_probability", "noise_covariance",
           "target_pull_correction", "StochasticCollapse", "stochastic_collapse_probability"]


# --- ODE-propagated probability (DESIGN 4.3) ------------------------------------------------------

class OdeCollapse(NamedTuple):
    """Result of :func:`ode_collapse_probability` (arrays with the grid's broadcast shape).

    Attributes:
      p: fraction of initial conditions whose final overlap s is > 0.
      se: its Monte-Carlo standard error ``sqrt(p (1 - p) / n)``.
      n_samples: number of initial conditions per cell.
      n_iter: steps integrated per cell.
    """

    p: np.ndarray
    se: np.ndarray
    n_samples: int
    n_iter: np.ndarray


def _tables(R, w_star, u_lo, u_hi, n_u, n_s, n_m):
    """f(s; u) and g(m; u) on a (log u) x (s | m) grid with theory's robust quadratures."""
    lu = np.linspace(math.log(u_lo), math.log(u_hi), n_u)
    f_tab, g_tab = _tables_jit(jnp.asarray(np.exp(lu), jnp.float32), R, w_star, n_s, n_m)
    return lu, f_tab, g_tab


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _tables_jit(u, R, w_star, n_s, n_m):
    s = jnp.linspace(-1.0, 1.0, n_s)[None, :]
    m = jnp.linspace(-1.0, 1.0, n_m)[None, :]
    return (theory.f(s, R=R, u=u[:, None], w1=0.5),
            theory.g(m, R=R, u=u[:, None], w_star=w_star))


def _interp_rows(tab, pos):
    """Rows of ``tab`` (n_u, n) linearly interpolated at fractional row positions pos (C,)."""
    i0 = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, tab.shape[0] - 2)
    lam = (pos - i0)[:, None]
    return (1.0 - lam) * tab[i0] + lam * tab[i0 + 1]


def _interp_cols(rows, x):
    """``rows[c](x[c, n])`` for x in [-1, 1] on a uniform grid (linear interpolation)."""
    n = rows.shape[1]
    pos = (jnp.clip(x, -1.0, 1.0) + 1.0) * (0.5 * (n - 1))
    i0 = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, n - 2)
    lam = pos - i0
    lo = jnp.take_along_axis(rows, i0, axis=1)
    hi = jnp.take_along_axis(rows, i0 + 1, axis=1)
    return (1.0 - lam) * lo + lam * hi


@jax.jit
def _propagate(x0, betas, coef, upos, f_tab, g_tab, stop, lr):
    """Expected JKO map for all cells x samples; returns s at each cell's stop step.

    x0 (N, 3) shared initial statistics; betas, coef (= 1/(beta v)), upos (fractional table
    row of u = sqrt(v)): (T, C); stop (C,) step index at which s is read.
    """
    C = betas.shape[1]
    m1 = jnp.broadcast_to(x0[None, :, 0], (C, x0.shape[0]))
    m2 = jnp.broadcast_to(x0[None, :, 1], (C, x0.shape[0]))
    s = jnp.broadcast_to(x0[None, :, 2], (C, x0.shape[0]))
    w = 0.5

    def body(carry, xs):
        m1, m2, s, s_out = carry
        t, beta, cf, up = xs
        f_row = _interp_rows(f_tab, up)
        g_row = _interp_rows(g_tab, up)
        F = cf[:, None] * _interp_cols(f_row, s)          # f / (beta v)
        g1, g2 = _interp_cols(g_row, m1), _interp_cols(g_row, m2)
        # nu_k / R = A_k mu_k/R + B_k mu_j/R + c_k mu*   (DESIGN 3 update, renormalised exactly)
        A = 1.0 - lr * w + lr * F
        B = -lr * F
        c1, c2 = -lr * w * g1, -lr * w * g2
        p1 = A * m1 + B * m2 + c1
        p2 = A * m2 + B * m1 + c2
        n11 = A * A + B * B + c1 * c1 + 2 * A * B * s + 2 * A * c1 * m1 + 2 * B * c1 * m2
        n22 = A * A + B * B + c2 * c2 + 2 * A * B * s + 2 * A * c2 * m2 + 2 * B * c2 * m1
        n12 = (A * B + A * A * s + A * c2 * m1 + B * B * s + B * A + B * c2 * m2
               + c1 * B * m1 + c1 * A * m2 + c1 * c2)
        r1, r2 = jnp.sqrt(n11), jnp.sqrt(n22)
        m1n = jnp.clip(p1 / r1, -1.0, 1.0)
        m2n = jnp.clip(p2 / r2, -1.0, 1.0)
        sn = jnp.clip(n12 / (r1 * r2), -1.0, 1.0)
        s_out = jnp.where((t + 1 == stop)[:, None], sn, s_out)
        return (m1n, m2n, sn, s_out), None

    T = betas.shape[0]
    s_out0 = jnp.where((stop == 0)[:, None], s, jnp.zeros_like(s))
    (_, _, _, s_out), _ = jax.lax.scan(
        body, (m1, m2, s, s_out0), (jnp.arange(T), betas, coef, upos))
    return s_out


class _Grid(NamedTuple):
    """Validated inputs and per-cell paths shared by the propagated theories."""

    d: int
    R: float
    w_star: float
    lr: float
    n_samples: int
    table_size: int
    shape: tuple
    n_it: np.ndarray
    betas: np.ndarray
    v: np.ndarray
    upos: np.ndarray          # fractional table row of u = sqrt(v), (C, T)
    coef: np.ndarray          # 1 / (beta v), (C, T)
    lu: np.ndarray
    f_tab: jax.Array
    g_tab: jax.Array


def _grid_setup(beta_i, t0, *, d, d_min, R, w_star, lr, schedule, n_samples, n_extra, table_size,
                n_u, n_iter, var0, with_variance) -> _Grid:
    """Validate the arguments common to :func:`ode_collapse_probability` and
    :func:`stochastic_collapse_probability` (ValueError naming the parameter), build every cell's
    inverse temperatures and variances (:func:`_cell_paths`; ``v = 1/beta`` without variance) and
    tabulate f and g over the range of ``u = sqrt(v)`` they need."""
    d = check_int_at_least("d", d, d_min)
    R = check_positive("R", R)
    w_star = check_open_unit("w_star", w_star)
    lr = check_positive("lr", lr)
    check_choice("schedule", schedule, tuple(SCHEDULES))
    n_samples = check_int_at_least("n_samples", n_samples, 1)
    n_extra = check_int_at_least("n_extra", n_extra, 0)
    table_size = check_int_at_least("table_size", table_size, 3)
    n_u = check_int_at_least("n_u", n_u, 2)
    b = _arr("beta_i", beta_i, lo=0.0, hi=1.0, hi_open=False)
    t = _arr("t0", t0, lo=0.0)
    b, t = np.broadcast_arrays(b, t)
    shape = b.shape
    n_it, betas, v = _cell_paths(b.ravel(), t.ravel(), shape, n_iter, n_extra, schedule, var0,
                                 lr)
    if not with_variance:
        v = 1.0 / betas
    u = np.sqrt(v)
    u_lo, u_hi = float(u.min()) * 0.999, float(u.max()) * 1.001
    lu, f_tab, g_tab = _tables(R, w_star, u_lo, u_hi, n_u, table_size, table_size)
    upos = (np.log(u) - lu[0]) / (lu[1] - lu[0])
    return _Grid(d, R, w_star, lr, n_samples, table_size, shape, n_it, betas, v, upos,
                 1.0 / (betas * v), lu, f_tab, g_tab)


def _decisions(s_fin, settled_s=None):
    """``(p, se, undecided)`` per cell from final overlaps (C, N): fraction with ``s > 0`` among
    the finite runs, its binomial SE, and (with ``settled_s``) the fraction with
    ``|s| < settled_s`` (else None)."""
    s_fin = np.asarray(s_fin, float)
    failed = ~np.isfinite(s_fin)
    n_ok = np.maximum((~failed).sum(-1), 1)
    p = np.where(failed, False, s_fin > 0).sum(-1) / n_ok
    se = np.sqrt(p * (1.0 - p) / n_ok)
    und = (None if settled_s is None else
           np.where(failed, False, np.abs(s_fin) < settled_s).sum(-1) / n_ok)
    return p, se, und


def ode_collapse_probability(beta_i, t0, *, d: int, R: float, w_star: float, lr: float = 0.05,
                             key: jax.Array, n_iter=None, n_extra: int = 100,
                             n_samples: int = 4096, with_variance: bool = True,
                             schedule: str = "exp", var0=None, table_size: int = 1025,
                             n_u: int = 256) -> OdeCollapse:
    """ODE-propagated collapse probability on a grid of cells (DESIGN 4.3).

    For every cell ``(beta_i, t0)`` (broadcast arrays) the expected discrete JKO map (DESIGN 4.1's
    ODE with the renormalisation |mu_k| = R done exactly, one map step per simulation step, beta =
    schedule(t)) is integrated from ``n_samples`` exact draws of the initial statistics
    (:func:`annealvi_lib.theory.ode.sample_initial_stats`: means i.i.d. Gaussian in d dimensions,
    rescaled to the sphere; the same draws for every cell: common random numbers). A run counts
    as collapsed when its overlap s at step ``n_iter`` is > 0.

    With ``with_variance`` the variances follow the simulation's deterministic map
    ``v <- v (1 - lr w (1 - 1/(beta v)))^2`` from ``var0`` (default 1/beta_i, the paper's) and the
    drift uses them (5-statistic system; the variances are the same for every sample of a cell
    since their map does not involve the means); otherwise ``v = 1/beta`` (3 statistics).
    f and g come from theory's quadratures tabulated on a (log u) x (s | m) grid and
    interpolated linearly (``table_size`` points on [-1, 1], ``n_u`` values of u) so that one
    scan integrates all cells x samples; measured table error < 3e-5 (f, g), and doubling both
    table sizes changed no sampled decision on the cells tried.

    Scope: the map is the *expected* dynamics (d -> infinity at fixed lr): it ignores the
    Monte-Carlo gradient noise, whose perpendicular part moves a mean by
    ``~ (lr/beta) sqrt(D / (B beta))`` per step at equilibrated variance -- comparable to R at the
    hottest starts (beta ~ 1e-4, B = 1024), where it re-randomises the means. There (and when the
    runs have not settled by ``n_iter``) use the Monte-Carlo samplers.

    Args:
      beta_i, t0: cell parameters (broadcast arrays; beta_i in (0, 1], t0 > 0 steps).
      d: dimension of the initial law (>= 3). R, w_star, lr: problem parameters.
      key: PRNG key for the initial draws.
      n_iter: steps per cell (scalar or broadcast array); default ``ceil(t0) + n_extra`` (the
        Monte-Carlo protocol's ``t0 + n_iter_extra``).
      n_samples: initial conditions per cell (>= 1).
      schedule: a name of :data:`annealvi_lib.models.schedules.SCHEDULES`.
      var0: initial variance(s) (default ``1 / beta(0)``).
    Returns:
      :class:`OdeCollapse` (p, se of the broadcast grid shape).
    """
    g = _grid_setup(beta_i, t0, d=d, d_min=3, R=R, w_star=w_star, lr=lr, schedule=schedule,
                    n_samples=n_samples, n_extra=n_extra, table_size=table_size, n_u=n_u,
                    n_iter=n_iter, var0=var0, with_variance=with_variance)
    x0 = theory.sample_initial_stats(key, g.d, g.n_samples)
    s_fin = _propagate(x0, jnp.asarray(g.betas.T, jnp.float32), jnp.asarray(g.coef.T, jnp.float32),
                       jnp.asarray(g.upos.T, jnp.float32), g.f_tab, g.g_tab,
                       jnp.asarray(g.n_it, jnp.int32), g.lr)
    p, se, _ = _decisions(s_fin)
    return OdeCollapse(p=p.reshape(g.shape), se=se.reshape(g.shape), n_samples=g.n_samples,
                       n_iter=g.n_it.reshape(g.shape))


# --- finite-batch stochastic theory ---------------------------------------------------------------


class StochasticCollapse(NamedTuple):
    """Result of :func:`stochastic_collapse_probability` (arrays of the grid's broadcast shape).

    Attributes:
      p: fraction of simulated runs whose final overlap s is > 0.
      se: its standard error ``sqrt(p (1 - p) / n)`` (n = ``n_samples``).
      undecided: fraction of runs whose final ``|s|`` is below ``settled_s`` (not settled yet).
      n_samples: runs per cell.
      n_iter: steps per cell.
    """

    p: np.ndarray
    se: np.ndarray
    undecided: np.ndarray
    n_samples: int
    n_iter: np.ndarray


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _sq_tables_jit(u, R, w_star, n_s, n_m):
    """Second moments on the (u, s | m) grids of :func:`_tables`: ``E sigma(a + b xi)^2`` of the
    equal-weight overlap (s) and ``E sigma(c + 2 R u xi)^2`` of the target pull (m, as in g)."""
    s = jnp.linspace(-1.0, 1.0, n_s)[None, :]
    a, b = theory._ab(s, R, u[:, None])
    m = jnp.linspace(-1.0, 1.0, n_m)[None, :]
    c = 2.0 * R**2 * m + jnp.log(w_star / (1.0 - w_star))
    return (theory.gauss_sigmoid_sq_mean(a, b),
            theory.gauss_sigmoid_sq_mean(c, 2.0 * R * u[:, None] * jnp.ones_like(c)))


def noise_covariance(s, v, beta, *, R: float, batch_per_component: float):
    """Per-direction covariance ``Q`` (2x2) of the Monte-Carlo gradient noise of the two means.

    Leading-order model: the fluctuating part of ``grad_{mu_j} L`` is the reparameterisation
    (score) term ``sum_kb (w_k/B) c_{j,kb} z_kb / sqrt(v)`` with isotropic ``z_kb``, so its
    covariance is ``Q (x) I_d`` with ``Q_jl = S_jl / (v B)``, ``S`` the equal-weight moments
    ``S_jl = sum_k w_k^2 E_{q_k}[c_jk c_lk]`` of :func:`annealvi_lib.theory.ode._noise_moments`
    (``c_jj = r_j + beta v - 1``, ``c_jk = r_j`` otherwise; r: responsibilities). This is *exact*
    for the components orthogonal to span{mu*, mu1, mu2} (the reduced sampler's ``E[S]/D``). In
    the span two terms of the per-sample gradient fluctuate as well: the target pull
    ``-beta R tanh(.)`` along mu* (it anti-correlates with the score term; added by
    :func:`target_pull_correction`, which :func:`stochastic_collapse_probability` uses) and the
    responsibilities in the mean terms ``r_j (mu_j - mu_k)/v`` (neglected). Both are relative
    corrections of order ``R sqrt(beta)`` to ``R^2 beta``: negligible in the hot phase, where the
    noise matters, and measured in chapter 3 and ``tests/test_collapse.py``. The categorical
    protocol (B in total, labels drawn from the weights) has the same ``Q`` at equal weights with
    ``B_component = B / 2``; its extra in-span term from the label counts, of relative order
    ``R^2 beta``, is neglected.

    Args:
      s: overlap(s) (array); v: common variance(s) > 0; beta: inverse temperature(s).
      R: mode distance. batch_per_component: samples per component B (> 0).
    Returns:
      ``(Q11, Q22, Q12)`` arrays of the broadcast shape.
    """
    S11, S22, S12 = theory._noise_moments(jnp.asarray(s, jnp.float32), v, beta, R, 0.5)
    k = 1.0 / (jnp.asarray(v) * batch_per_component)
    return S11 * k, S22 * k, S12 * k


def _pull_terms(es, es2, e, dlt, beta, R):
    """Correction ``B dQ_jj`` along mu* from the target pull of mean j's own samples, and
    ``E[1 - tanh^2]``.

    A sample of component j contributes ``sigma (beta - r_other/v) z1 - beta R tanh(y/2)`` to the
    mu*-coordinate of mean j's gradient, with ``y = 2 R^2 m_j + 2 R sigma z1 + ln(w*/(1-w*))`` (g's
    argument). With ``es = E sigma(y)``, ``es2 = E sigma(y)^2``: ``E tanh = 2 es - 1``,
    ``E[1 - tanh^2] = 4 (es - es2)`` and, by Stein's lemma, ``E[z1 tanh] = sigma R E[1 - tanh^2]``,
    so the pull adds ``w^2 [beta^2 R^2 Var tanh - 2 beta R^2 (beta v - e) E[1 - tanh^2]]`` per
    sample to the score term's variance (``e = E_{q_j} r_other``, ``dlt = beta v - 1``).
    """
    one = 4.0 * (es - es2)                                     # E[1 - tanh^2]
    var_h = 1.0 - one - (2.0 * es - 1.0) ** 2                  # Var tanh
    bR2 = beta * R * R
    return 0.25 * (beta * bR2 * var_h - 2.0 * bR2 * (dlt + 1.0 - e) * one), one


def target_pull_correction(m1, m2, s, v, beta, *, R: float, w_star: float,
                           batch_per_component: float):
    """Correction to the noise covariance of the two means' gradients along mu*, from the
    fluctuation of the target pull (see :func:`noise_covariance`; exact quadratures, for checks).

    Args:
      m1, m2: the means' overlaps with mu*; s: their overlap; v: common variance; beta: inverse
        temperature. R, w_star: target. batch_per_component: B.
    Returns:
      ``(dQ11, dQ22, dQ12)`` (units of :func:`noise_covariance`), added to ``Q`` along mu*.
    """
    u = jnp.sqrt(jnp.asarray(v, jnp.float32))
    e = 2.0 * theory.f(s, R=R, u=u)
    out, ones = [], []
    for m in (m1, m2):
        c = 2.0 * R**2 * jnp.asarray(m, jnp.float32) + math.log(w_star / (1.0 - w_star))
        b = 2.0 * R * u * jnp.ones_like(c)
        es, es2 = theory.gauss_sigmoid_mean(c, b), theory.gauss_sigmoid_sq_mean(c, b)
        dq, one = _pull_terms(es, es2, e, beta * v - 1.0, beta, R)
        out.append(dq)
        ones.append(one)
    d12 = -0.25 * beta * R * R * e * (ones[0] + ones[1])
    return out[0] / batch_per_component, out[1] / batch_per_component, d12 / batch_per_component


def _chol2(a11, a12, a22):
    """Lower Cholesky factor ``(l11, l21, l22)`` of a 2x2 PSD matrix (elementwise arrays)."""
    l11 = jnp.sqrt(jnp.maximum(a11, 0.0))
    safe = jnp.where(l11 > 0, l11, 1.0)
    l21 = jnp.where(l11 > 0, a12 / safe, 0.0)
    l22 = jnp.sqrt(jnp.maximum(a22 - l21 * l21, 0.0))
    return l11, l21, l22


def _stochastic_step(m1, m2, s, beta, coef, up, v, key, f_tab, sq_tab, g_tab, gsq_tab, lr, R,
                     n_bc, D, in_span=True, perpendicular=True):
    """One step of the finite-batch model for arrays (C, N) of statistics (units of R)."""
    f_row = _interp_rows(f_tab, up)
    q_row = _interp_rows(sq_tab, up)
    g_row = _interp_rows(g_tab, up)
    fs = _interp_cols(f_row, s)
    e2 = _interp_cols(q_row, s)                  # E sigma^2 = E_{q1} r2^2
    F = coef[:, None] * fs                        # f / (beta v)
    g1, g2 = _interp_cols(g_row, m1), _interp_cols(g_row, m2)
    w = 0.5
    A = 1.0 - lr * w + lr * F
    B = -lr * F
    c1, c2 = -lr * w * g1, -lr * w * g2
    # span coordinates (units of R): mu1 = (m1, q1, 0), mu2 = (m2, c, t), mu* = e1
    q1 = jnp.sqrt(jnp.maximum(1.0 - m1 * m1, 0.0))
    safe_q1 = jnp.where(q1 > 1e-6, q1, 1.0)
    cc = jnp.where(q1 > 1e-6, (s - m1 * m2) / safe_q1, 0.0)
    lim2 = jnp.sqrt(jnp.maximum(1.0 - m2 * m2, 0.0))
    cc = jnp.clip(cc, -lim2, lim2)
    tt = jnp.sqrt(jnp.maximum(1.0 - m2 * m2 - cc * cc, 0.0))
    zero = jnp.zeros_like(m1)
    mu1 = (m1, q1, zero)
    mu2 = (m2, cc, tt)
    nu1 = [A * a1 + B * a2 for a1, a2 in zip(mu1, mu2)]
    nu2 = [A * a2 + B * a1 for a1, a2 in zip(mu1, mu2)]
    nu1[0] = nu1[0] + c1
    nu2[0] = nu2[0] + c2
    # gradient noise N_j with covariance Q (x) I_d, step -(lr/beta)/R per unit gradient
    e = 2.0 * fs                                  # E sigma = E_{q1} r2 (equal weights)
    vv = v[:, None]
    dlt = beta * vv - 1.0
    S11 = w * w * ((1.0 - 2.0 * e + e2) + 2.0 * dlt * (1.0 - e) + dlt * dlt + e2)
    S12 = 2.0 * w * w * ((e - e2) + dlt * e)
    kq = (lr / (beta * R)) ** 2 / (vv * n_bc)    # (lr/(beta R))^2 / (v B), shape (C, 1)
    l11, l21, l22 = _chol2(S11 * kq, S12 * kq, S11 * kq)
    # along mu*: the target pull -beta R tanh(R x1 + h) of a component's own samples fluctuates
    # with x1 and anti-correlates with the score term (Stein: E[z1 tanh] = sigma R E[1 - tanh^2]);
    # with Es = E sigma(y), Es2 = E sigma(y)^2 of g's argument y: E tanh = 2 Es - 1,
    # E[1 - tanh^2] = 4 (Es - Es2)
    gsq_row = _interp_rows(gsq_tab, up)
    es1, es2 = 0.5 * (1.0 - g1), 0.5 * (1.0 - g2)
    d11, one1 = _pull_terms(es1, _interp_cols(gsq_row, m1), e, dlt, beta, R)
    d22, one2 = _pull_terms(es2, _interp_cols(gsq_row, m2), e, dlt, beta, R)
    d12 = -w * w * beta * R * R * e * (one1 + one2)
    kb = (lr / (beta * R)) ** 2 / n_bc           # these terms carry no 1/v
    k11, k21, k22 = _chol2(S11 * kq + d11 * kb, S12 * kq + d12 * kb, S11 * kq + d22 * kb)
    xi = jax.random.normal(key, (9,) + m1.shape)
    for a in range(3 if in_span else 0):
        a11, a21, a22 = (k11, k21, k22) if a == 0 else (l11, l21, l22)
        nu1[a] = nu1[a] - a11 * xi[a]
        nu2[a] = nu2[a] - (a21 * xi[a] + a22 * xi[3 + a])
    if not perpendicular:
        l11 = l21 = l22 = jnp.zeros_like(l11)
    # perpendicular part: Gram ~ Wishart_2(D, Q) by Bartlett (chi^2 by Wilson-Hilferty, D >= 30)
    def wh(z, dof):
        aa = 2.0 / (9.0 * dof)
        y = 1.0 - aa + z * math.sqrt(aa)
        return dof * y * y * y
    ch1 = jnp.sqrt(jnp.maximum(wh(xi[6], D), 0.0))
    ch2 = jnp.sqrt(jnp.maximum(wh(xi[8], D - 1), 0.0))
    p1 = (l11 * ch1, zero)
    p2 = (l21 * ch1 + l22 * xi[7], l22 * ch2)
    n11 = sum(a * a for a in nu1) + p1[0] * p1[0]
    n22 = sum(a * a for a in nu2) + p2[0] * p2[0] + p2[1] * p2[1]
    n12 = sum(a * b for a, b in zip(nu1, nu2)) + p1[0] * p2[0]
    r1, r2 = jnp.sqrt(n11), jnp.sqrt(n22)
    m1n = jnp.clip(nu1[0] / r1, -1.0, 1.0)
    m2n = jnp.clip(nu2[0] / r2, -1.0, 1.0)
    sn = jnp.clip(n12 / (r1 * r2), -1.0, 1.0)
    return m1n, m2n, sn


@functools.partial(jax.jit, static_argnames=("D", "in_span", "perpendicular"))
def _propagate_noisy(key, x0, betas, coef, upos, vs, f_tab, sq_tab, g_tab, gsq_tab, stop, lr, R,
                     n_bc, D, in_span=True, perpendicular=True):
    """Finite-batch model for all cells x samples; returns s at each cell's stop step (C, N)."""
    C = betas.shape[1]
    m1 = jnp.broadcast_to(x0[None, :, 0], (C, x0.shape[0]))
    m2 = jnp.broadcast_to(x0[None, :, 1], (C, x0.shape[0]))
    s = jnp.broadcast_to(x0[None, :, 2], (C, x0.shape[0]))
    T = betas.shape[0]
    keys = jax.random.split(key, T)

    def body(carry, xs):
        m1, m2, s, s_out = carry
        t, k, beta, cf, up, v = xs
        m1n, m2n, sn = _stochastic_step(m1, m2, s, beta[:, None], cf, up, v, k, f_tab, sq_tab,
                                        g_tab, gsq_tab, lr, R, n_bc, D, in_span,
                                        perpendicular)
        s_out = jnp.where((t + 1 == stop)[:, None], sn, s_out)
        return (m1n, m2n, sn, s_out), None

    s_out0 = jnp.where((stop == 0)[:, None], s, jnp.zeros_like(s))
    (_, _, _, s_out), _ = jax.lax.scan(
        body, (m1, m2, s, s_out0), (jnp.arange(T), keys, betas, coef, upos, vs))
    return s_out


def stochastic_collapse_probability(beta_i, t0, *, d: int, R: float, w_star: float,
                                    lr: float = 0.05, batch: int = 1024,
                                    sampling: str = "stratified", key: jax.Array, n_iter=None,
                                    n_extra: int = 100, n_samples: int = 2048,
                                    schedule: str = "exp", var0=None, table_size: int = 1025,
                                    n_u: int = 256, settled_s: float = 0.9,
                                    in_span: bool = True,
                                    perpendicular: bool = True) -> StochasticCollapse:
    """Finite-batch collapse probability: the expected JKO map of
    :func:`ode_collapse_probability` plus Gaussian gradient noise of the Monte-Carlo moments.

    One consistent model of the noise (:func:`noise_covariance`): the gradient of each mean gets
    an isotropic Gaussian fluctuation of per-direction covariance ``Q`` (2x2 across the means),
    split into its 3 coordinates in span{mu*, mu1, mu2} (**in-span diffusion**) and its
    ``D = d - 3`` orthogonal coordinates, whose 2x2 Gram matrix is drawn from
    ``Wishart_2(D, Q)`` (**perpendicular shrinkage**: after the renormalisation ``|mu_k| = R``
    the orthogonal kick shortens the in-span part, on average by the deterministic correction of
    chapter 2). Each step costs 9 normals and O(1) arithmetic per run, independent of B and d;
    all cells x runs go through one ``lax.scan``. The variances follow the deterministic map of
    :func:`ode_collapse_probability` (their noise is O(1/sqrt(d B)) relative). A run counts as
    collapsed when its final s is > 0, as in the Monte Carlo.

    Args:
      beta_i, t0: cell parameters (broadcast arrays). d (>= 33), R, w_star, lr: problem.
      batch: Monte-Carlo batch B (>= 1): samples per component (``stratified``) or in total
        (``categorical``, equal weights: B/2 per component on average).
      sampling: ``"stratified"`` or ``"categorical"``.
      key: PRNG key (initial draws and noise). n_iter, n_extra, schedule, var0, table_size, n_u:
        as in :func:`ode_collapse_probability`. n_samples: runs per cell (>= 1).
      settled_s: ``|s|`` below which a final state counts as undecided (reported, not excluded).
      in_span, perpendicular: keep the in-span noise / the perpendicular noise (both by default;
        switching one off is an ablation that shows which part of the noise matters).
    Returns:
      :class:`StochasticCollapse`.
    """
    batch = check_int_at_least("batch", batch, 1)
    check_choice("sampling", sampling, SAMPLINGS)
    settled_s = float(_arr("settled_s", settled_s, lo=0.0, hi=1.0))
    n_bc = float(batch) if sampling == "stratified" else 0.5 * batch
    g = _grid_setup(beta_i, t0, d=d, d_min=33, R=R, w_star=w_star, lr=lr, schedule=schedule,
                    n_samples=n_samples, n_extra=n_extra, table_size=table_size, n_u=n_u,
                    n_iter=n_iter, var0=var0, with_variance=True)
    sq_tab, gsq_tab = _sq_tables_jit(jnp.asarray(np.exp(g.lu), jnp.float32), g.R, g.w_star,
                                     g.table_size, g.table_size)
    # the same initial draws as ode_collapse_probability with this key (common random numbers)
    x0 = theory.sample_initial_stats(key, g.d, g.n_samples)
    k_noise = jax.random.fold_in(key, 1)
    f32 = lambda a: jnp.asarray(np.ascontiguousarray(a.T), jnp.float32)
    with fast_threefry():
        s_fin = _propagate_noisy(k_noise, x0, f32(g.betas), f32(g.coef), f32(g.upos), f32(g.v),
                                 g.f_tab, sq_tab, g.g_tab, gsq_tab, jnp.asarray(g.n_it, jnp.int32),
                                 g.lr, g.R, n_bc, g.d - 3, bool(in_span), bool(perpendicular))
    p, se, und = _decisions(s_fin, settled_s)
    return StochasticCollapse(p=p.reshape(g.shape), se=se.reshape(g.shape),
                              undecided=und.reshape(g.shape), n_samples=g.n_samples,
                              n_iter=g.n_it.reshape(g.shape))
