"""Summary-statistics theory of the GMM student (chapter 2): the functions f, g, the closed ODE
for ``(m1, m2, s)``, its extension with the variances, and integrators that follow the
simulation's own beta(t) sequence.

Notation (DESIGN sections 3 and 4.1): ``m_k = <mu_k, mu*>/R``, ``s = <mu1, mu2>/R^2``, component
variances ``v_k = sigma_k^2``; ``u`` is the common standard deviation of the student components
(``u^2 = 1/beta`` when the variances are equilibrated); continuous time ``tau = lr * t``.

Derivation summary (the chapter gives it in full). With equal variances ``v`` the *expected*
gradient of the stratified loss is exact at any d:

    grad_{mu1} L = w1 beta [mu1 + R mu* g(m1)] - (f(s)/v) (mu1 - mu2),

where ``g(m) = -E tanh(R^2 m + R sqrt(v) xi + h)`` (``h = ln(w*/(1-w*))/2``) comes from the
potential and ``f(s) = w1 E_{q1}[r2] = int q r1 r2 dx`` from the entropy (``r_k``: component
responsibilities). The identity ``w1 E_{q1}[r2] = w1 E_{q1}[r2^2] + w2 E_{q2}[r1^2]`` shows that
this ``f`` is exactly DESIGN's squared-sigmoid form; we evaluate the one-sigmoid form. The update
``mu <- mu - (lr/beta) grad`` followed by the renormalisation ``|mu| = R`` gives, to first order in
lr, DESIGN's system (the tangent projection) with ``dtau = lr dt`` -- no extra sign or factor.
When ``v != 1/beta`` the entropy coefficient is ``f/(beta v)`` and g is evaluated at ``u = sqrt(v)``.
To leading order in d the variance update is ``v <- v (1 - lr w_k (1 - 1/(beta v)))^2``, i.e.
``dv/dtau = -2 w_k (v - 1/beta)``.

Quadrature. ``E sigma(c + b xi)`` (xi ~ N(0,1)) is computed by a hybrid rule:

* ``b <= 2``: 32-node Gauss-Hermite on ``sigma(c + b xi)`` (the integrand is analytic with poles
  at distance ``>= pi/b`` from the real axis, so the rule converges geometrically; ``b -> 0`` gives
  ``sigma(c)`` exactly);
* ``b > 2``: split off the step, ``E sigma(c + b xi) = Phi(c/b) + int (sigma(y) - 1[y>0])
  phi((y-c)/b)/b dy``; the correction integrand decays like ``e^{-|y|}`` on each side of the kink
  at 0, so each half-line is a 24-node Gauss-Laguerre rule on the smooth remaining factor.

Measured accuracy against mpmath (tests/test_ode.py) for ``u`` in [0.3, 1e3], ``m, s`` in
[-1, 1], R = 3: absolute error below ``2e-6`` (float32 round-off level), where plain Gauss-Hermite
misses by up to ~1e-2 at large u.

Everything here is jit-able and broadcasts over array arguments; statistics arrays carry the
statistic on the LAST axis (``(..., 3)`` or ``(..., 5)``) so many initial conditions are
integrated at once inside one ``lax.scan``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from .._validate import (check_choice, check_int_at_least, check_open_unit, check_positive)
from ..models.schedules import Schedule

__all__ = [
    "gauss_sigmoid_mean",
    "gauss_sigmoid_sq_mean",
    "f",
    "g",
    "f_large_u",
    "g_large_u",
    "weight_bias",
    "ode_rhs",
    "ode_rhs5",
    "OdeTrajectory",
    "integrate_ode",
    "integrate_ode5",
    "stats_from_state",
    "initial_stats",
    "sample_initial_stats",
    "expected_mean_grad",
    "sup_error",
]

_SQRT2PI = math.sqrt(2.0 * math.pi)

# --- quadrature nodes (module constants; immutable) -------------------------------------------
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(32)      # probabilists' Hermite: weight e^{-x^2/2}
_GH_X = jnp.asarray(_GH_X, jnp.float32)
_GH_W = jnp.asarray(_GH_W / math.sqrt(2.0 * math.pi), jnp.float32)
_GL_X, _GL_W = np.polynomial.laguerre.laggauss(24)           # weight e^{-y} on [0, inf)
_GL_X = jnp.asarray(_GL_X, jnp.float32)
_GL_W = jnp.asarray(_GL_W, jnp.float32)
_B_SPLIT = 2.0


def _check_scalar(name, value, checker):
    """Validate ``value`` with ``checker`` when it is a concrete Python/NumPy scalar."""
    if isinstance(value, (int, float, np.floating, np.integer)):
        checker(name, value)


def _gh_mean(fun, c, b):
    """Gauss-Hermite estimate of E fun(c + b xi); c, b broadcast, nodes on a new last axis."""
    y = c[..., None] + b[..., None] * _GH_X
    return jnp.sum(fun(y) * _GH_W, axis=-1)


def _split_mean(corr_pos, corr_neg, c, b):
    """Step-split estimate: Phi(c/b) + int_0^inf e^{-y}[corr_pos(y) phi((y-c)/b)
    + corr_neg(y) phi((-y-c)/b)]/b dy, each half-line by Gauss-Laguerre.

    ``corr_pos(y) = e^{y} (F(y) - 1)`` and ``corr_neg(y) = e^{y} F(-y)`` for y >= 0, where F is the
    sigmoid-like function whose Gaussian mean is wanted (both smooth and bounded).
    """
    y = _GL_X
    cb, bb = c[..., None], b[..., None]
    phi_pos = jnp.exp(-0.5 * ((y - cb) / bb) ** 2) / (_SQRT2PI * bb)
    phi_neg = jnp.exp(-0.5 * ((-y - cb) / bb) ** 2) / (_SQRT2PI * bb)
    corr = jnp.sum(_GL_W * (corr_pos(y) * phi_pos + corr_neg(y) * phi_neg), axis=-1)
    return ndtr(c / b) + corr


def _hybrid(fun, corr_pos, corr_neg, c, b):
    c = jnp.asarray(c, jnp.float32)
    b = jnp.abs(jnp.asarray(b, jnp.float32))
    c, b = jnp.broadcast_arrays(c, b)
    big = b > _B_SPLIT
    # Evaluate both branches on safe arguments so that gradients through jnp.where stay finite.
    b_small = jnp.where(big, 0.0, b)
    b_big = jnp.where(big, b, 2.0 * _B_SPLIT)
    return jnp.where(big, _split_mean(corr_pos, corr_neg, c, b_big), _gh_mean(fun, c, b_small))


def gauss_sigmoid_mean(c, b):
    """``E sigma(c + b xi)``, xi ~ N(0, 1), by the hybrid quadrature of the module docstring.

    Args:
      c, b: location and scale (broadcast arrays; ``b >= 0``, ``b = 0`` allowed).
    Returns:
      array of the broadcast shape, in (0, 1).
    """
    # y >= 0: e^y (sigma(y) - 1) = -1/(1 + e^{-y});  e^y sigma(-y) = 1/(1 + e^{-y})
    return _hybrid(jax.nn.sigmoid,
                   lambda y: -1.0 / (1.0 + jnp.exp(-y)),
                   lambda y: 1.0 / (1.0 + jnp.exp(-y)), c, b)


def gauss_sigmoid_sq_mean(c, b):
    """``E sigma(c + b xi)^2``, xi ~ N(0, 1), by the same hybrid quadrature."""
    # y >= 0: e^y (sigma(y)^2 - 1) = -(1 + sigma(y))/(1 + e^{-y});
    #         e^y sigma(-y)^2 = e^{-y}/(1 + e^{-y})^2
    return _hybrid(lambda y: jax.nn.sigmoid(y) ** 2,
                   lambda y: -(1.0 + jax.nn.sigmoid(y)) / (1.0 + jnp.exp(-y)),
                   lambda y: jnp.exp(-y) / (1.0 + jnp.exp(-y)) ** 2, c, b)


def _ab(s, R, u):
    """``a = (R^2/u^2)(s - 1)`` and ``b = (R/u) sqrt(2(1 - s))`` of f."""
    s = jnp.asarray(s, jnp.float32)
    a = (R / u) ** 2 * (s - 1.0)
    # clamp: sqrt'(0) is infinite; at s = 1 the b-dependence is second order anyway
    b = (R / u) * jnp.sqrt(jnp.maximum(2.0 * (1.0 - s), 1e-30))
    return a, b


def f(s, *, R, u, w1=0.5):
    """Entropy-repulsion function of DESIGN 4.1,
    ``f(s) = E[w1 sigma(a + b xi + ln(w2/w1))^2 + w2 sigma(a + b xi + ln(w1/w2))^2]``.

    Computed through the exact identity ``f = w1 E sigma(a + b xi + ln(w2/w1))`` (= the overlap
    ``int q r1 r2 dx`` of the two student components; it uses ``a = -b^2/2``).

    Args:
      s: overlap ``<mu1, mu2>/R^2`` in [-1, 1] (array).
      R: mode distance (> 0). u: component standard deviation (> 0), ``u^2 = 1/beta`` when the
        variances are equilibrated. w1: weight of component 1 in (0, 1), ``w2 = 1 - w1``.
    Returns:
      f, broadcast shape of (s, R, u, w1); in (0, w1 w2]; ``-> w1 w2`` as ``u -> inf``.
    """
    _check_scalar("R", R, check_positive)
    _check_scalar("u", u, check_positive)
    _check_scalar("w1", w1, check_open_unit)
    a, b = _ab(s, R, u)
    return w1 * gauss_sigmoid_mean(a + jnp.log((1.0 - w1) / w1), b)


def f_squared_form(s, *, R, u, w1=0.5):
    """DESIGN's literal squared-sigmoid form of f (for checking the identity used by :func:`f`)."""
    a, b = _ab(s, R, u)
    lr_ = jnp.log((1.0 - w1) / w1)
    return (w1 * gauss_sigmoid_sq_mean(a + lr_, b) + (1.0 - w1) * gauss_sigmoid_sq_mean(a - lr_, b))


def g(m, *, R, u, w_star=0.8):
    """Mode-attraction function ``g(m) = 1 - 2 E sigma(2 R^2 m + 2 R u xi + ln(w*/(1-w*)))``.

    Equals ``-E tanh(R^2 m + R u xi + h)``, h = ln(w*/(1-w*))/2: minus the mean pull of the
    tempered potential along mu* felt by a component with overlap m and std u.

    Args:
      m: overlap ``<mu_k, mu*>/R`` in [-1, 1] (array).
      R: mode distance (> 0). u: the component's standard deviation (> 0).
      w_star: heavy-mode weight in (0, 1).
    Returns:
      g in (-1, 1), broadcast shape.
    """
    _check_scalar("R", R, check_positive)
    _check_scalar("u", u, check_positive)
    _check_scalar("w_star", w_star, check_open_unit)
    m = jnp.asarray(m, jnp.float32)
    c = 2.0 * R**2 * m + jnp.log(w_star / (1.0 - w_star))
    return 1.0 - 2.0 * gauss_sigmoid_mean(c, 2.0 * R * u * jnp.ones_like(c))


def weight_bias(R, w_star):
    """Signed offset ``eps_s = ln(w*/(1-w*)) / (2 R^2)`` (DESIGN's eps = |eps_s|)."""
    return math.log(w_star / (1.0 - w_star)) / (2.0 * R**2)


def f_large_u(s, *, R, u, w1=0.5):
    """High-temperature expansion ``f = w1 w2 [1 - 2 w1 w2 R^2 (1 - s)/u^2] + O(u^-4)``."""
    w2 = 1.0 - w1
    return w1 * w2 * (1.0 - 2.0 * w1 * w2 * R**2 * (1.0 - jnp.asarray(s)) / u**2)


def g_large_u(m, *, R, u, w_star=0.8):
    """High-temperature expansion ``g = -(2R/(sqrt(2 pi) u)) (m + eps_s) + O(u^-3)``."""
    return -(2.0 * R / (_SQRT2PI * u)) * (jnp.asarray(m) + weight_bias(R, w_star))


# --- ODE right-hand sides ----------------------------------------------------------------------

def _drift(m1, m2, s, v1, v2, beta, R, w_star, w1):
    """Tangent drift d(m1, m2, s)/dtau for component variances v1, v2 at inverse temperature beta.

    Entropy coefficient of component k: ``f(s; u=sqrt(v_k)) / (beta v_k)`` (exact when v1 = v2,
    which the variance dynamics keeps for w1 = w2).
    """
    w2 = 1.0 - w1
    u1, u2 = jnp.sqrt(v1), jnp.sqrt(v2)
    F1 = f(s, R=R, u=u1, w1=w1) / (beta * v1)
    F2 = F1 if v2 is v1 else f(s, R=R, u=u2, w1=w1) / (beta * v2)
    g1 = g(m1, R=R, u=u1, w_star=w_star)
    g2 = g(m2, R=R, u=u2, w_star=w_star)
    dm1 = -((m2 - m1 * s) * F1 + w1 * (1.0 - m1**2) * g1)
    dm2 = -((m1 - m2 * s) * F2 + w2 * (1.0 - m2**2) * g2)
    ds = -((1.0 - s**2) * (F1 + F2) + w1 * (m2 - m1 * s) * g1 + w2 * (m1 - m2 * s) * g2)
    return dm1, dm2, ds


def ode_rhs(stats, beta, *, R, w_star=0.8, w1=0.5):
    """DESIGN 4.1 right-hand side ``d(m1, m2, s)/dtau`` with variances equilibrated (u^2 = 1/beta).

    Args:
      stats: array (..., 3) of (m1, m2, s).
      beta: inverse temperature in (0, 1] (scalar or broadcastable to stats[..., 0]).
      R, w_star, w1: target/student parameters.
    Returns:
      array (..., 3).
    """
    stats = jnp.asarray(stats, jnp.float32)
    v = 1.0 / jnp.asarray(beta, jnp.float32)
    d = _drift(stats[..., 0], stats[..., 1], stats[..., 2], v, v, beta, R, w_star, w1)
    return jnp.stack(d, axis=-1)


def ode_rhs5(stats, beta, *, R, w_star=0.8, w1=0.5):
    """Extended right-hand side ``d(m1, m2, s, v1, v2)/dtau`` with the variances dynamical:
    ``dv_k/dtau = -2 w_k (v_k - 1/beta)`` and the mean drift at the actual variances.

    Args:
      stats: array (..., 5) of (m1, m2, s, v1, v2).
    Returns:
      array (..., 5).
    """
    stats = jnp.asarray(stats, jnp.float32)
    m1, m2, s, v1, v2 = (stats[..., i] for i in range(5))
    beta = jnp.asarray(beta, jnp.float32)
    d = _drift(m1, m2, s, v1, v2, beta, R, w_star, w1)
    dv1 = -2.0 * w1 * (v1 - 1.0 / beta)
    dv2 = -2.0 * (1.0 - w1) * (v2 - 1.0 / beta)
    return jnp.stack(d + (dv1, dv2), axis=-1)


# --- discrete map (what the simulation does, in expectation) ----------------------------------

def _noise_moments(s, v, beta, R, w1):
    """Second moments of the perpendicular Monte-Carlo gradient noise (finite-batch correction).

    The score term ``sum_j w_j mean_b r_k(x_jb)(x_jb - mu_k)/v`` of the reparameterised gradient
    (and, under variance lag, the path term ``w_k (beta - 1/v) sqrt(v) mean_b z``) has a component
    orthogonal to span{mu*, mu1, mu2} of squared norm ``~ d_perp/(v B) * S_kk``; returns
    ``(S11, S22, S12)`` with ``S_kl = sum_j w_j^2 E_{q_j}[c_kj c_lj]``,
    ``c_kk = r_k + beta v - 1``, ``c_kj = r_k`` (j != k).
    """
    w2 = 1.0 - w1
    a, b = _ab(s, R, jnp.sqrt(v))
    lw = jnp.log(w2 / w1)
    e2_1 = gauss_sigmoid_mean(a + lw, b)       # E_{q1} r2
    e22_1 = gauss_sigmoid_sq_mean(a + lw, b)   # E_{q1} r2^2
    e1_2 = gauss_sigmoid_mean(a - lw, b)       # E_{q2} r1
    e11_2 = gauss_sigmoid_sq_mean(a - lw, b)   # E_{q2} r1^2
    e1_1, e11_1 = 1.0 - e2_1, 1.0 - 2.0 * e2_1 + e22_1           # E_{q1} r1, r1^2
    e2_2, e22_2 = 1.0 - e1_2, 1.0 - 2.0 * e1_2 + e11_2           # E_{q2} r2, r2^2
    e12_1, e12_2 = e2_1 - e22_1, e1_2 - e11_2                    # E r1 r2 under q1, q2
    dlt = beta * v - 1.0
    S11 = w1**2 * (e11_1 + 2 * dlt * e1_1 + dlt**2) + w2**2 * e11_2
    S22 = w2**2 * (e22_2 + 2 * dlt * e2_2 + dlt**2) + w1**2 * e22_1
    S12 = w1**2 * (e12_1 + dlt * e2_1) + w2**2 * (e12_2 + dlt * e1_2)
    return S11, S22, S12


def _map_step(m1, m2, s, v1, v2, beta, lr, R, w_star, w1, d_over_batch):
    """One expected JKO step ``mu_k <- R nu_k/|nu_k|`` written in the statistics.

    ``nu1 = A1 mu1 + B1 mu2 + C1 mu*`` with ``A1 = 1 - lr w1 + lr F1``, ``B1 = -lr F1``,
    ``C1 = -lr w1 R g1`` (``F_k = f/(beta v_k)``): the Gram matrix of (mu1, mu2, mu*) is known from
    the statistics, so the renormalised statistics are exact functions of the old ones and
    Cauchy-Schwarz keeps |m_k|, |s| <= 1. With ``d_over_batch > 0`` the expected squared norm of the
    orthogonal Monte-Carlo noise ``(lr/beta)^2 d_perp/(v B) S_kl`` is added to the Gram matrix.
    """
    w2 = 1.0 - w1
    F1 = f(s, R=R, u=jnp.sqrt(v1), w1=w1) / (beta * v1)
    F2 = F1 if v2 is v1 else f(s, R=R, u=jnp.sqrt(v2), w1=w1) / (beta * v2)
    g1 = g(m1, R=R, u=jnp.sqrt(v1), w_star=w_star)
    g2 = g(m2, R=R, u=jnp.sqrt(v2), w_star=w_star)
    A1, B1, C1 = 1.0 - lr * w1 + lr * F1, -lr * F1, -lr * w1 * R * g1
    A2, B2, C2 = 1.0 - lr * w2 + lr * F2, -lr * F2, -lr * w2 * R * g2   # nu2 = A2 mu2 + B2 mu1 + C2 mu*
    R2 = R * R
    p1 = A1 * R * m1 + B1 * R * m2 + C1                                  # <nu1, mu*>
    p2 = A2 * R * m2 + B2 * R * m1 + C2
    n11 = (A1**2 + B1**2) * R2 + C1**2 + 2 * A1 * B1 * R2 * s + 2 * A1 * C1 * R * m1 + 2 * B1 * C1 * R * m2
    n22 = (A2**2 + B2**2) * R2 + C2**2 + 2 * A2 * B2 * R2 * s + 2 * A2 * C2 * R * m2 + 2 * B2 * C2 * R * m1
    n12 = (A1 * B2 * R2 + A1 * A2 * R2 * s + A1 * C2 * R * m1 + B1 * B2 * R2 * s + B1 * A2 * R2
           + B1 * C2 * R * m2 + C1 * B2 * R * m1 + C1 * A2 * R * m2 + C1 * C2)
    if d_over_batch is not None:
        # equal-variance noise model (v1 ~ v2); harmless when d_over_batch == 0
        v = 0.5 * (v1 + v2)
        S11, S22, S12 = _noise_moments(s, v, beta, R, w1)
        k = (lr / beta) ** 2 * d_over_batch / v
        n11, n22, n12 = n11 + k * S11, n22 + k * S22, n12 + k * S12
    r1, r2 = jnp.sqrt(n11), jnp.sqrt(n22)
    m1n, m2n, sn = p1 / r1, p2 / r2, n12 / (r1 * r2)
    # guard float32 round-off (the exact map satisfies these bounds)
    m1n, m2n, sn = (jnp.clip(x, -1.0, 1.0) for x in (m1n, m2n, sn))
    v1n = v1 * (1.0 - lr * w1 * (1.0 - 1.0 / (beta * v1))) ** 2
    v2n = v2 * (1.0 - lr * w2 * (1.0 - 1.0 / (beta * v2))) ** 2
    return m1n, m2n, sn, v1n, v2n


class OdeTrajectory(NamedTuple):
    """Integrated statistics at steps 0..n_iter (shape (..., n_iter + 1), aligned with
    :class:`annealvi_lib.models.student.Trajectory`: entry t = state before step t). ``var1, var2`` are
    ``1/beta`` for the 3-statistic ODE."""

    m1: jax.Array
    m2: jax.Array
    s: jax.Array
    var1: jax.Array
    var2: jax.Array
    beta: jax.Array


def _checked_integrate(stats0, five, schedule, n_iter, R, w_star, lr, w1, method, substeps,
                       record, d_over_batch) -> OdeTrajectory:
    """Validate the arguments of :func:`integrate_ode` (``five=False``, statistics (m1, m2, s))
    or :func:`integrate_ode5` (``five=True``, plus v1, v2), then integrate."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be an annealvi_lib.models.schedules.Schedule, got {schedule!r}")
    n_iter = check_int_at_least("n_iter", n_iter, 0)
    check_positive("R", R)
    check_open_unit("w_star", w_star)
    check_positive("lr", lr)
    check_open_unit("w1", w1)
    check_choice("method", method, ("euler", "rk4"))
    substeps = check_int_at_least("substeps", substeps, 1)
    if d_over_batch is not None:
        if float(d_over_batch) < 0 or not math.isfinite(float(d_over_batch)):
            raise ValueError(f"d_over_batch must be a finite number >= 0, got {d_over_batch!r}")
        if method != "euler":
            raise ValueError("d_over_batch (finite-batch correction) requires method='euler'")
    x0 = jnp.asarray(stats0, jnp.float32)
    names = "(m1, m2, s, v1, v2)" if five else "(m1, m2, s)"
    if x0.shape[-1:] != (len(names.split(",")),):
        raise ValueError(f"stats0 must have shape (..., {len(names.split(','))}) = {names}, "
                         f"got {x0.shape}")
    dob = 0.0 if d_over_batch is None else float(d_over_batch)
    return _integrate(x0, schedule, n_iter, float(R), float(w_star), float(lr), float(w1),
                      method, substeps, record, five, d_over_batch is not None, dob)


@partial(jax.jit, static_argnames=("schedule", "n_iter", "R", "w_star", "lr", "w1", "method",
                                   "substeps", "record", "five", "use_noise"))
def _integrate(x0, schedule, n_iter, R, w_star, lr, w1, method, substeps, record, five,
               use_noise, dob):
    # dob (d_perp/B) is traced so that a scan over d or B does not recompile
    d_over_batch = dob if use_noise else None
    x0 = jnp.asarray(x0, jnp.float32)
    steps = jnp.arange(n_iter + 1)
    betas = schedule(steps)

    if five:
        carry0 = tuple(x0[..., i] for i in range(5))
    else:
        v0 = jnp.broadcast_to(1.0 / betas[0], x0[..., 0].shape)
        carry0 = (x0[..., 0], x0[..., 1], x0[..., 2], v0, v0)

    def rhs(y, beta):
        m1, m2, s, v1, v2 = y
        if not five:
            v1 = v2 = 1.0 / beta
        dm1, dm2, ds = _drift(m1, m2, s, v1, v2, beta, R, w_star, w1)
        if five:
            dv1 = -2.0 * w1 * (v1 - 1.0 / beta)
            dv2 = -2.0 * (1.0 - w1) * (v2 - 1.0 / beta)
        else:
            dv1 = dv2 = jnp.zeros_like(v1)
        return (dm1, dm2, ds, dv1, dv2)

    def step(y, t):
        if method == "euler":
            beta = schedule(t)
            m1, m2, s, v1, v2 = y
            if not five:
                v1 = v2 = jnp.broadcast_to(1.0 / beta, m1.shape)   # same object: f computed once
            out = _map_step(m1, m2, s, v1, v2, beta, lr, R, w_star, w1, d_over_batch)
            if not five:
                nb = schedule(t + 1)
                out = out[:3] + (jnp.broadcast_to(1.0 / nb, m1.shape),) * 2
            return out
        # RK4 on the tangent ODE in tau, beta(tau) = schedule(tau/lr) at non-integer steps;
        # substeps in a fori_loop (unrolling them makes XLA compile times explode)
        h = 1.0 / substeps

        def sub(k, y):
            tk = t + k * h
            add = lambda a, b, c: tuple(ai + c * bi for ai, bi in zip(a, b))
            k1 = rhs(y, schedule(tk))
            k2 = rhs(add(y, k1, 0.5 * h * lr), schedule(tk + 0.5 * h))
            k3 = rhs(add(y, k2, 0.5 * h * lr), schedule(tk + 0.5 * h))
            k4 = rhs(add(y, k3, h * lr), schedule(tk + h))
            y = tuple(yi + (h * lr / 6.0) * (a + 2 * b + 2 * c + e)
                      for yi, a, b, c, e in zip(y, k1, k2, k3, k4))
            # the continuous flow keeps |m|, |s| <= 1; clip the O(h^5) excursions of RK4
            return tuple(jnp.clip(x, -1.0, 1.0) for x in y[:3]) + y[3:]

        y = jax.lax.fori_loop(0, substeps, sub, y)
        if not five:
            nb = schedule(t + 1)
            y = y[:3] + (jnp.broadcast_to(1.0 / nb, y[0].shape),) * 2
        return y

    def body(y, t):
        new = step(y, t)
        return new, (y if record else None)

    final, rec = jax.lax.scan(body, carry0, steps[:-1].astype(jnp.float32))
    if not record:
        cols = [x[..., None] for x in final]
    else:
        # scan stacks on axis 0: move time to the last axis and append the final state
        cols = [jnp.concatenate([jnp.moveaxis(r, 0, -1), x[..., None]], axis=-1)
                for r, x in zip(rec, final)]
    beta_arr = betas if record else betas[-1:]
    beta_arr = jnp.broadcast_to(beta_arr, cols[0].shape)
    return OdeTrajectory(m1=cols[0], m2=cols[1], s=cols[2], var1=cols[3], var2=cols[4],
                         beta=beta_arr)


def integrate_ode(stats0, schedule: Schedule, n_iter: int, *, R: float, w_star: float = 0.8,
                  lr: float = 0.05, w1: float = 0.5, method: str = "euler", substeps: int = 4,
                  record: bool = True, d_over_batch: float | None = None) -> OdeTrajectory:
    """Integrate the 3-statistic ODE (variances equilibrated, u^2 = 1/beta) along ``schedule``.

    ``method="euler"``: the expected discrete JKO map, one step per simulation step t with
    beta = schedule(t) and the renormalisation |mu_k| = R done exactly in the statistics; it is
    explicit Euler for DESIGN's ODE up to O(lr^2) per step and reproduces the simulation's deterministic
    part. ``method="rk4"``: classical RK4 on the tangent ODE in tau with ``substeps`` substeps per
    simulation step, beta(tau) = schedule(tau/lr) evaluated continuously.

    Args:
      stats0: initial (m1, m2, s), shape (..., 3); any leading batch shape is integrated at once
        (also ``jax.vmap``-able).
      schedule: :class:`Schedule` (the same one the simulation uses).
      n_iter: number of steps (>= 0).
      R, w_star: target parameters. lr: learning rate eta (tau = lr t). w1: student weight.
      method: ``"euler"`` or ``"rk4"``. substeps: RK4 substeps per step (>= 1).
      record: if False only the final state is returned (time axis of length 1).
      d_over_batch: optional finite-batch correction ``(d - 3)/B`` (euler only; None = d -> inf
        at fixed d/B -> 0, the plain ODE).
    Returns:
      :class:`OdeTrajectory` with arrays of shape (..., n_iter + 1) (or (..., 1)).
    """
    return _checked_integrate(stats0, False, schedule, n_iter, R, w_star, lr, w1, method,
                              substeps, record, d_over_batch)


def integrate_ode5(stats0, schedule: Schedule, n_iter: int, *, R: float, w_star: float = 0.8,
                   lr: float = 0.05, w1: float = 0.5, method: str = "euler", substeps: int = 4,
                   record: bool = True, d_over_batch: float | None = None) -> OdeTrajectory:
    """Integrate the 5-statistic system (m1, m2, s, v1, v2) along ``schedule``.

    Same API as :func:`integrate_ode`; ``stats0`` has shape (..., 5). In ``euler`` mode the
    variances follow the simulation's discrete map ``v <- v (1 - lr w_k (1 - 1/(beta v)))^2``.
    """
    return _checked_integrate(stats0, True, schedule, n_iter, R, w_star, lr, w1, method,
                              substeps, record, d_over_batch)


# --- initial conditions and helpers -----------------------------------------------------------

def stats_from_state(state, target, five: bool = False):
    """(m1, m2, s) -- or (m1, m2, s, v1, v2) -- of a :class:`StudentState`, shape (..., 3|5)."""
    R = target.R
    m = state.mu @ target.mu_star / R
    s = jnp.sum(state.mu[..., 0, :] * state.mu[..., 1, :], -1) / R**2
    cols = [m[..., 0], m[..., 1], s]
    if five:
        cols += [state.var[..., 0], state.var[..., 1]]
    return jnp.stack(cols, axis=-1)


def initial_stats(init_keys, target):
    """Exact initial (m1, m2, s) of the runs of :func:`student.simulate_seeds` with these keys.

    Args:
      init_keys: keys of shape (S,) (the first output of :func:`student.seed_keys`).
      target: the :class:`Target`.
    Returns:
      array (S, 3).
    """
    from .._rng import fast_threefry
    from ..models.student import init_student

    # same PRNG bit layout as simulate_seeds draws its initial means with (else other means)
    with fast_threefry():
        states = jax.vmap(lambda k: init_student(k, target.d, target.R, 1.0))(init_keys)
    return stats_from_state(states, target)


def sample_initial_stats(key, d: int, n: int):
    """Draw n exact samples of (m1, m2, s) for means initialised as i.i.d. Gaussian vectors
    rescaled to the sphere in dimension d, in O(n) work (not O(n d)).

    With g_k = x_k mu* + rho_k n_k (rho_k^2 ~ chi^2_{d-1}, n_k uniform on the sphere orthogonal to
    mu*): m_k = x_k/|g_k| and s = (x1 x2 + rho1 rho2 c)/(|g1||g2|), where c = <n1, n2> is one
    coordinate of a uniform point of S^{d-2}: c = z/sqrt(z^2 + chi^2_{d-2}). Each m_k, s is
    ~ N(0, 1/d) for large d.

    Args:
      key: PRNG key. d: dimension (>= 3). n: number of samples (>= 1).
    Returns:
      array (n, 3).
    """
    d = check_int_at_least("d", d, 3)
    n = check_int_at_least("n", n, 1)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    x = jax.random.normal(k1, (n, 2))
    rho2 = 2.0 * jax.random.gamma(k2, (d - 1) / 2.0, (n, 2))
    z = jax.random.normal(k3, (n,))
    chi = 2.0 * jax.random.gamma(k4, (d - 2) / 2.0, (n,))
    c = z / jnp.sqrt(z**2 + chi)
    norm = jnp.sqrt(x**2 + rho2)
    m = x / norm
    s = (x[:, 0] * x[:, 1] + jnp.sqrt(rho2[:, 0] * rho2[:, 1]) * c) / (norm[:, 0] * norm[:, 1])
    return jnp.stack([m[:, 0], m[:, 1], s], axis=-1)


def expected_mean_grad(state, target, beta):
    """Exact expected gradient of the stratified loss w.r.t. the means (equal variances v):
    ``w_k beta [mu_k + R mu* g(m_k)] -/+ (f(s)/v)(mu1 - mu2)``; shape (2, d).

    Valid at any d (no large-d approximation) when ``var[0] == var[1]``.
    """
    w1 = 0.5
    v = state.var[0]
    m1, m2, s = (stats_from_state(state, target)[i] for i in range(3))
    R = target.R
    u = jnp.sqrt(v)
    fs = f(s, R=R, u=u, w1=w1)
    g1 = g(m1, R=R, u=u, w_star=target.w_star)
    g2 = g(m2, R=R, u=u, w_star=target.w_star)
    diff = state.mu[0] - state.mu[1]
    gr1 = w1 * beta * (state.mu[0] + R * target.mu_star * g1) - fs / v * diff
    gr2 = (1 - w1) * beta * (state.mu[1] + R * target.mu_star * g2) + fs / v * diff
    return jnp.stack([gr1, gr2])


def sup_error(traj_a, traj_b, fields=("m1", "m2", "s")):
    """Sup-norm over time and over the given fields of ``|a - b|`` (last axis = time)."""
    errs = [jnp.max(jnp.abs(getattr(traj_a, k) - getattr(traj_b, k)), axis=-1) for k in fields]
    return jnp.max(jnp.stack(errs), axis=0)
