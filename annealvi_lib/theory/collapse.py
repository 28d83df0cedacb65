"""Collapse-probability theory of the GMM student (DESIGN sections 4.2 and 4.3).

Closed form (the paper's sharp formula). With ``eps = |ln((1-w*)/w*)| / (2 R^2)``,
``tau0 = lr t0`` and the critical inverse temperature ``beta_c = alpha / R^2``,

    I(beta_i, tau0) = (R / sqrt(2 pi)) int_0^{tau_c} sqrt(beta(tau)) dtau,
    P_collapse      = erf( sqrt(d) eps e^{-I} ),

where ``tau_c`` is the time at which ``beta(tau)`` reaches ``beta_c`` (``I = 0`` if
``beta_i >= beta_c``). For the exponential schedule ``beta(tau) = beta_i^{1 - tau/tau0}``,
``I = (R/sqrt(2 pi)) (2 tau0 / ln beta_i) (sqrt(beta_i) - sqrt(beta_c)) >= 0`` (both factors are
negative when ``beta_i < beta_c``). This is the paper's heuristic, kept as the paper's formula.
Its picture: while ``beta < beta_c`` the entropy repulsion keeps the means antipodal (``s ~ -1``)
and their axis overlap difference ``Delta = m1 - m2`` grows at the rotation rate
``a = R sqrt(beta)/sqrt(2 pi)``; at ``beta_c`` both means go to the heavy mode unless
``|Delta| e^I >= 2 eps``; with ``Delta(0) ~ N(0, 2/d)`` this gives ``P = erf(sqrt(d) eps e^{-I})``.

What the derivation actually supports (chapter 3, each step checked numerically):

* for ``w* != 1/2`` the point ``m = 0, s = -1`` is not a fixed point at any beta: ``g(0) != 0``
  tilts the pair toward the heavy mode. The pair sits on the *symmetric branch*
  ``m1 = m2 = m_b(beta)``, ``s = 2 m_b^2 - 1`` (:func:`symmetric_branch`), which deforms
  continuously with beta; ``beta_c`` (where the relative eigenvalue vanishes) is where the
  linear tilt ``a eps/(2F - a)`` (:func:`linear_tilt`) diverges -- a crossover, not a loss of
  stability (the rotation mode is unstable at every beta);
* while the pair becomes antipodal, ``Delta`` grows by ``sqrt(2/(1 - s0)) ~ sqrt(2)``
  (:func:`antipodal_growth`), which the heuristic leaves out (``growth=sqrt(2)``);
* the rate is evaluated on the equilibrated variance; the simulation's variance lags behind
  ``1/beta`` (:func:`lagged_annealing_exponent`, ``variance_lag=True``);
* the gradient noise, of per-step size ~ ``(lr/beta) sqrt(d/(B beta))``, dominates the hot phase;
  :func:`stochastic_collapse_probability` adds it (in-span diffusion and perpendicular
  shrinkage, one Gaussian model with the Monte-Carlo moments).

Critical temperature (derived here, :func:`critical_beta`). Write the two means in the plane of
``mu*`` as angles ``theta_k`` (``m_k = sin theta_k``). The tangent ODE of DESIGN 4.1 reads
``dtheta_1/dtau = -w1 g(sin theta_1) cos theta_1 - F sin(theta_2 - theta_1)`` and symmetrically,
with ``F = f(s)`` (equilibrated variances ``u^2 = 1/beta``). At the antipodal state
``theta_2 = theta_1 + pi`` with ``m = 0`` the Jacobian is

    J = [[a1 - F, F], [F, a2 - F]],   a_k = -w_k g'(0) = 4 w_k R^2 E[sigma'(2 R u xi + ln(w*/(1-w*)))],

``F = f(s = -1)``. The rigid rotation of the pair (eigenvector (1, 1) when w1 = w2) is always
unstable with rate ``a = R sqrt(beta)/sqrt(2 pi) (1 + O(1/u^2))``: this is the growth of Delta.
The relative mode (eigenvector (1, -1): breaking antipodality, ``s`` leaving -1) has eigenvalue
``a - 2F`` (general weights: ``det J = a1 a2 - F (a1 + a2)``). Linearised at the antipodal
state, that direction is restoring while ``f(-1; beta) > a1 a2 / (a1 + a2)``; ``beta_c`` is the
root (where the linear tilt diverges: the crossover of the tilted branch, see above). The
out-of-plane relative mode has eigenvalue ``-2F < 0`` and never destabilises. In the large-R
limit at fixed ``x = R sqrt(beta)``, ``f(-1) = E sigma(-2 x^2 + 2 x xi)/2`` and ``a = x/sqrt(2 pi)``,
so ``x_c`` solves ``E sigma(-2 x^2 + 2 x xi) = x / sqrt(2 pi)``: ``alpha_inf = x_c^2 = 0.5834``;
at R = 3, w* = 0.8 the root gives ``alpha = 0.5863`` (the paper uses 0.608, unexplained there).

Beyond the closed form: :func:`ode_collapse_probability` integrates the expected discrete JKO
map (the ODE of DESIGN 4.1 with the renormalisation done exactly) with or without variance lag
from exact samples of the initial statistics, for a whole grid of cells in one vmapped scan;
:func:`stochastic_collapse_probability` adds the finite-batch gradient noise to the same map
(O(1) work per run and step, independent of B and d).
Without annealing (beta = 1, var 1 from the start) the means start nearly orthogonal, not
antipodal, the entropy coupling is weak, and each mean goes to the mode on its side of
``m = -eps`` independently: ``P ~ Phi(sqrt(d) eps)^2 + Phi(-sqrt(d) eps)^2`` (0.92 at d = 512),
not the closed form's ``erf(sqrt(d) eps)`` (0.986); the ODE reproduces the former.

All closed-form functions are NumPy-vectorised (broadcasting over grids) and validate every
input (ValueError naming the parameter).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf, erfinv, lambertw

from .._validate import check_choice, check_int_at_least, check_open_unit, check_positive
from ..models.schedules import SCHEDULES
from . import ode as theory
from .._rng import fast_threefry
from ..config import SAMPLINGS

__all__ = [
    "PAPER_ALPHA",
    "collapse_epsilon",
    "critical_beta",
    "derived_alpha",
    "alpha_large_r",
    "stability_exponents",
    "annealing_exponent",
    "collapse_probability",
    "annealing_time_for_probability",
    "hot_start_probability",
    "optimal_beta_i",
    "OdeCollapse",
    "ode_collapse_probability",
    "symmetric_branch",
    "linear_tilt",
    "antipodal_growth",
    "vanilla_probability",
    "lagged_annealing_exponent",
    "noise_covariance",
    "target_pull_correction",
    "StochasticCollapse",
    "stochastic_collapse_probability",
]

#: The paper's value of alpha = beta_c R^2 (no published derivation).
PAPER_ALPHA = 0.608
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_CLOSED_FORM_SCHEDULES = ("exp", "step", "constant", "linear_beta", "linear_temperature")


# --- validation of array arguments --------------------------------------------------------------

def _arr(name, value, *, lo=None, hi=None, lo_open=True, hi_open=True):
    """``value`` as a float64 array; raises ValueError naming ``name`` if any element is
    non-finite or outside the stated interval."""
    try:
        x = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number or array, got {value!r}") from None
    rng = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
           f"{'inf' if hi is None else hi}{')' if hi_open else ']'}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite and lie in {rng}, got {value!r}")
    bad = np.zeros(x.shape, bool)
    if lo is not None:
        bad |= (x <= lo) if lo_open else (x < lo)
    if hi is not None:
        bad |= (x >= hi) if hi_open else (x > hi)
    if np.any(bad):
        raise ValueError(f"{name} must lie in {rng}, got {value!r}")
    return x


def _common(d, R, w_star, lr):
    d = check_int_at_least("d", d, 2)
    R = check_positive("R", R)
    w_star = check_open_unit("w_star", w_star)
    lr = check_positive("lr", lr)
    return d, R, w_star, lr


def collapse_epsilon(R: float, w_star: float) -> float:
    """``eps = |ln((1 - w*)/w*)| / (2 R^2)``: the weight bias of the unstable point of one mean."""
    R = check_positive("R", R)
    w_star = check_open_unit("w_star", w_star)
    return abs(math.log((1.0 - w_star) / w_star)) / (2.0 * R * R)


# --- critical temperature ----------------------------------------------------------------------

def stability_exponents(beta, *, R: float, w_star: float, w1: float = 0.5):
    """Linear-stability quantities of the antipodal state ``m1 = m2 = 0, s = -1`` (equilibrated).

    Args:
      beta: inverse temperature(s) > 0 (array; values above 1 allowed for root finding).
      R, w_star: target parameters. w1: student weight of component 1 (w2 = 1 - w1).
    Returns:
      ``(a1, a2, F, lam_rel)`` arrays: the single-mean instability rates ``a_k = -w_k g'(0)``, the
      entropy coupling ``F = f(-1)``, and the smallest eigenvalue of the in-plane Jacobian
      ``J = [[a1 - F, F], [F, a2 - F]]`` (negative: antipodal state stable; its sign change is
      beta_c). Uses :func:`annealvi_lib.theory.ode.f` and the quadratures of :mod:`theory`.
    """
    R = check_positive("R", R)
    w_star = check_open_unit("w_star", w_star)
    w1 = check_open_unit("w1", w1)
    b = _arr("beta", beta, lo=0.0)
    out = _stability_jit(jnp.asarray(b, jnp.float32).ravel(), R, w_star, w1)
    return tuple(np.asarray(x, float).reshape(b.shape) for x in out)


def _stability(b, R, w_star, w1):
    u = 1.0 / jnp.sqrt(b)
    c = jnp.full(b.shape, math.log(w_star / (1.0 - w_star)), jnp.float32)
    bq = 2.0 * R * u
    # g(m) = 1 - 2 E sigma(2 R^2 m + 2 R u xi + L)  =>  g'(0) = -4 R^2 E[sigma (1 - sigma)]
    dsig = theory.gauss_sigmoid_mean(c, bq) - theory.gauss_sigmoid_sq_mean(c, bq)
    a1 = 4.0 * w1 * R * R * dsig
    a2 = 4.0 * (1.0 - w1) * R * R * dsig
    F = theory.f(jnp.full(b.shape, -1.0, jnp.float32), R=R, u=u, w1=w1)
    tr, det = a1 + a2 - 2.0 * F, a1 * a2 - F * (a1 + a2)
    lam_rel = 0.5 * (tr - jnp.sqrt(jnp.maximum(tr * tr - 4.0 * det, 0.0)))
    return a1, a2, F, lam_rel


_stability_jit = jax.jit(_stability, static_argnums=(1, 2, 3))


def critical_beta(R: float, w_star: float, w1: float = 0.5) -> float:
    """Inverse temperature at which the antipodal state loses stability (module docstring).

    Root of ``f(-1; u = 1/sqrt(beta)) = a1 a2 / (a1 + a2)`` in ``log beta``: a 4001-point scan of
    ``beta in [1e-8, 1e4]`` brackets the sign change, a 201-point scan refines it (relative
    accuracy ~1e-4, limited by the float32 quadrature). A root above 1 means the antipodal state is still stable at
    beta = 1 (no collapse mechanism at the target temperature); ``inf`` if none in the range.

    Args:
      R: mode distance (> 0). w_star: heavy-mode weight in (0, 1). w1: student weight in (0, 1).
    Returns:
      beta_c (float).
    """
    R = check_positive("R", R)
    w_star = check_open_unit("w_star", w_star)
    w1 = check_open_unit("w1", w1)

    def phi(lb):
        a1, a2, F, _ = stability_exponents(np.exp(lb), R=R, w_star=w_star, w1=w1)
        return F - a1 * a2 / (a1 + a2)

    grid = np.linspace(math.log(1e-8), math.log(1e4), 4001)
    val = phi(grid)
    idx = np.nonzero((val[:-1] > 0) & (val[1:] <= 0))[0]
    if idx.size == 0:
        return math.inf
    lo, hi = grid[idx[0]], grid[idx[0] + 1]
    # refine inside the bracket (width 7e-3 in log beta); float32 noise makes phi non-monotone
    # below ~1e-6, so stop at a 201-point scan and interpolate linearly between the two nodes
    grid = np.linspace(lo, hi, 4001)[::20]        # 201 nodes; same array size -> one compile
    val = phi(np.linspace(lo, hi, 4001))[::20]
    idx = np.nonzero((val[:-1] > 0) & (val[1:] <= 0))[0]
    if idx.size == 0:
        return float(math.exp(0.5 * (lo + hi)))
    i = idx[0]
    vlo, vhi = val[i], val[i + 1]
    frac = vlo / (vlo - vhi) if vlo != vhi else 0.5
    return float(math.exp(grid[i] + (grid[i + 1] - grid[i]) * frac))


def derived_alpha(R: float, w_star: float, w1: float = 0.5) -> float:
    """``alpha = beta_c R^2`` from :func:`critical_beta` (compare :data:`PAPER_ALPHA` = 0.608).

    Memoised on ``(R, w_star, w1)`` (a pure function; the first call costs ~1 s of compilation)."""
    R = check_positive("R", R)
    w_star = check_open_unit("w_star", w_star)
    w1 = check_open_unit("w1", w1)
    return _derived_alpha_cached(R, w_star, w1)


@functools.lru_cache(maxsize=64)
def _derived_alpha_cached(R: float, w_star: float, w1: float) -> float:
    return critical_beta(R, w_star, w1) * R**2


def alpha_large_r() -> float:
    """Large-R limit of the derived alpha: ``x_c^2`` with ``E sigma(-2x^2 + 2x xi) = x/sqrt(2pi)``
    (float64 Gauss-Hermite, 200 nodes; the integrand is smooth for x ~ 1)."""
    from scipy.optimize import brentq
    from scipy.special import expit

    xs, ws = np.polynomial.hermite_e.hermegauss(200)
    ws = ws / _SQRT_2PI
    x_c = brentq(lambda x: np.sum(ws * expit(-2 * x * x + 2 * x * xs)) - x / _SQRT_2PI, 0.1, 2.0,
                 xtol=1e-14)
    return float(x_c * x_c)


def _alpha(alpha, R, w_star):
    if alpha is None:
        return derived_alpha(R, w_star)
    return check_positive("alpha", alpha)


# --- closed form --------------------------------------------------------------------------------

def _exponent_per_step(beta_i, beta_c, schedule):
    """``int_0^{t_c} sqrt(beta(t)) dt / t0`` (dimensionless; 0 where beta_i >= beta_c)."""
    b = np.minimum(beta_i, beta_c)         # beta_i >= beta_c -> every expression below is 0
    bc = np.minimum(beta_c, 1.0)           # beta never exceeds 1
    b = np.minimum(b, bc)
    if schedule == "exp":
        with np.errstate(divide="ignore", invalid="ignore"):
            val = 2.0 * (np.sqrt(b) - np.sqrt(bc)) / np.log(beta_i)
        return np.where(beta_i >= bc, 0.0, val)
    if schedule == "step":
        return np.where(beta_i >= bc, 0.0, np.sqrt(beta_i))
    if schedule == "constant":
        return np.zeros_like(np.asarray(beta_i, float))
    if schedule == "linear_beta":
        with np.errstate(divide="ignore", invalid="ignore"):
            val = (2.0 / 3.0) * (bc**1.5 - b**1.5) / (1.0 - beta_i)
        return np.where(beta_i >= bc, 0.0, val)
    # linear_temperature: T falls linearly from T_i to 1; dt = t0 dT / (1 - T_i)
    T_i, T_c = 1.0 / np.maximum(b, 1e-300), 1.0 / bc
    with np.errstate(divide="ignore", invalid="ignore"):
        val = 2.0 * (np.sqrt(T_i) - np.sqrt(T_c)) / (T_i - 1.0)
    return np.where(beta_i >= bc, 0.0, val)


def annealing_exponent(beta_i, t0, *, R: float, lr: float, alpha: float, schedule: str = "exp"):
    """Amplification exponent ``I = (R / sqrt(2 pi)) int_0^{tau_c} sqrt(beta(tau)) dtau`` (>= 0).

    Args:
      beta_i: initial inverse temperature(s) in (0, 1]. t0: annealing time(s) in steps (> 0).
      R: mode distance. lr: learning rate (tau = lr t). alpha: beta_c R^2 (> 0).
      schedule: ``exp`` (the paper's), ``step``, ``constant``, ``linear_beta`` or
        ``linear_temperature`` (all closed form).
    Returns:
      I with the broadcast shape of (beta_i, t0).
    """
    check_choice("schedule", schedule, _CLOSED_FORM_SCHEDULES)
    b = _arr("beta_i", beta_i, lo=0.0, hi=1.0, hi_open=False)
    t = _arr("t0", t0, lo=0.0)
    R = check_positive("R", R)
    lr = check_positive("lr", lr)
    alpha = check_positive("alpha", alpha)
    beta_c = alpha / R**2
    per = _exponent_per_step(b, beta_c, schedule)
    return (R / _SQRT_2PI) * lr * t * per


def lagged_annealing_exponent(beta_i, t0, *, R: float, lr: float, alpha, schedule: str = "exp",
                              var0=None):
    """Amplification exponent with the rotation rate evaluated on the *lagging* variance:
    ``I_lag = (R / sqrt(2 pi)) lr sum_{t : beta_t < beta_c} v_t^(-1/2)``.

    The closed form assumes equilibrated variances, rate ``R sqrt(beta)/sqrt(2 pi) = R/(sqrt(2 pi)
    u)`` with ``u^2 = 1/beta``. In the simulation the variance follows
    ``v <- v (1 - lr w (1 - 1/(beta v)))^2`` from ``1/beta_i`` and lags behind ``1/beta`` while
    beta rises, so the growth of Delta is slower: the rate is ``R/(sqrt(2 pi) sqrt(v_t))`` step by
    step (a Riemann sum with ``dtau = lr``; without lag it reproduces :func:`annealing_exponent` to
    O(lr)).

    Args:
      beta_i, t0: cells (broadcast arrays; beta_i in (0, 1], t0 > 0 steps).
      R, lr: problem. alpha: ``beta_c R^2`` (> 0), scalar or 1-d array (a leading axis is added).
      schedule: a name of :data:`annealvi_lib.models.schedules.SCHEDULES`. var0: initial variance(s)
        (default ``1/beta_i``).
    Returns:
      I_lag with the broadcast shape of (beta_i, t0), preceded by alpha's axis if alpha is an array.
    """
    R = check_positive("R", R)
    lr = check_positive("lr", lr)
    check_choice("schedule", schedule, tuple(SCHEDULES))
    al = _arr("alpha", alpha, lo=0.0)
    b = _arr("beta_i", beta_i, lo=0.0, hi=1.0, hi_open=False)
    t = _arr("t0", t0, lo=0.0)
    b, t = np.broadcast_arrays(b, t)
    shape = b.shape
    _, betas, v = _cell_paths(b.ravel(), t.ravel(), shape, None, 0, schedule, var0, lr)
    rate = 1.0 / np.sqrt(v)                                          # (C, T)
    cum = np.concatenate([np.zeros((rate.shape[0], 1)), np.cumsum(rate, axis=1)], axis=1)
    beta_c = np.atleast_1d(al) / R**2
    # beta(t) is non-decreasing for every schedule: the steps below beta_c are a prefix. The
    # crossing time is interpolated in log beta between the last step below beta_c and the
    # first one above, so that I_lag is continuous in alpha (a whole-step count would make it a
    # staircase, and a fit of alpha would sit on its steps).
    n_c = np.stack([np.searchsorted(row, beta_c, side="left") for row in betas], axis=1)  # (A, C)
    cells = np.arange(cum.shape[0])[None, :]
    T = betas.shape[1]
    lo = np.clip(n_c - 1, 0, T - 1)
    hi = np.clip(n_c, 0, T - 1)
    lb = np.log(betas)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (np.log(beta_c)[:, None] - lb[cells, lo]) / (lb[cells, hi] - lb[cells, lo])
    frac = np.where((n_c >= 1) & (n_c < T) & np.isfinite(frac), np.clip(frac, 0.0, 1.0), 1.0)
    I_steps = np.where(n_c >= 1, cum[cells, lo] + frac * rate[cells, lo], 0.0)
    I_steps = np.where(n_c >= T, cum[cells, T], I_steps)
    I = ((R / _SQRT_2PI) * lr * I_steps).reshape((len(beta_c),) + shape)
    return I[0] if np.ndim(al) == 0 else I


def vanilla_probability(*, d: int, R: float, w_star: float):
    """Collapse probability without annealing (beta = 1 and unit variances from the start):
    ``Phi(sqrt(d) eps)^2 + Phi(-sqrt(d) eps)^2``.

    At beta = 1 the entropy coupling is weak and the pair never becomes antipodal: each mean
    goes to the mode on its side of the zero ``m = -eps`` of g, independently of the other, from
    ``m_k(0) ~ N(0, 1/d)``; the run collapses when both go to the same mode. The closed form's
    ``beta_i >= beta_c`` value ``erf(sqrt(d) eps)`` assumes an antipodal pair and does not apply.
    """
    from scipy.stats import norm

    d, R, w_star, _ = _common(d, R, w_star, 0.05)
    x = math.sqrt(d) * collapse_epsilon(R, w_star)
    return float(norm.cdf(x) ** 2 + norm.cdf(-x) ** 2)


def antipodal_growth(s0):
    """Growth of ``Delta = m1 - m2`` while the entropy drives a pair from overlap ``s0`` to the
    antipodal state ``s = -1`` (high temperature, where the mode pull g is negligible).

    With ``g = 0`` the ODE gives ``dDelta/dtau = F (1 + s) Delta`` and
    ``ds/dtau = -2 F (1 - s^2)``, so ``dDelta/ds = -Delta / (2 (1 - s))`` and
    ``Delta(s = -1) / Delta(s0) = sqrt(2 / (1 - s0))``: ``sqrt(2)`` from a random start
    (``s0 ~ N(0, 1/d)``), a factor the paper's heuristic leaves out.
    """
    s0 = _arr("s0", s0, lo=-1.0, hi=1.0)
    return np.sqrt(2.0 / (1.0 - s0))


def symmetric_branch(beta, *, R: float, w_star: float):
    """Overlap ``m_b`` of the tilted symmetric fixed point of the equal-weight ODE (equilibrated
    variances): ``m1 = m2 = m_b``, ``s = 2 m_b^2 - 1``, where ``m_b`` solves
    ``2 m f(2 m^2 - 1) + g(m) / 2 = 0``.

    For ``w* != 1/2``, ``g(0) != 0``: the point ``m = 0, s = -1`` is not a fixed point at any
    beta. The pair sits on this branch instead, tilted toward the heavy mode, and the tilt grows
    continuously with beta (small while beta << beta_c, O(1) near beta_c). The root is the one
    continued from high temperature: the smallest positive root in (0, 1).

    Args:
      beta: inverse temperature(s) > 0 (array). R, w_star: target parameters (w_star > 1/2).
    Returns:
      m_b, the shape of ``beta`` (NaN where no root is bracketed).
    """
    R = check_positive("R", R)
    w_star = check_open_unit("w_star", w_star)
    if w_star <= 0.5:
        raise ValueError(f"w_star must be > 0.5 for a tilted branch, got {w_star!r}")
    b = _arr("beta", beta, lo=0.0)
    m = np.linspace(0.0, 1.0, 2001)[:-1]
    out = np.full(b.size, np.nan)
    for k, bk in enumerate(b.ravel()):
        u = 1.0 / math.sqrt(float(bk))
        h = np.asarray(2.0 * m * theory.f(2.0 * m * m - 1.0, R=R, u=u)
                       + 0.5 * theory.g(m, R=R, u=u, w_star=w_star), float)
        idx = np.nonzero((h[:-1] < 0) & (h[1:] >= 0))[0]
        if idx.size:
            i = idx[0]
            out[k] = m[i] + (m[i + 1] - m[i]) * h[i] / (h[i] - h[i + 1])
    return out.reshape(b.shape)


def linear_tilt(beta, *, R: float, w_star: float):
    """Linear-response tilt of the antipodal pair toward the heavy mode,
    ``a eps / (2 F - a)`` (rotation rate ``a``, entropy coupling ``F = f(-1)``, both from
    :func:`stability_exponents`): the constant pull ``a eps`` of the weight bias divided by the
    restoring rate ``-lambda_rel = 2F - a``. It diverges where ``lambda_rel = 0`` (beta_c): the
    linearisation breaks down there, while the exact branch (:func:`symmetric_branch`) stays
    finite -- beta_c marks a crossover, not a loss of stability. Negative (meaningless) above
    beta_c.
    """
    eps = collapse_epsilon(R, w_star)
    a1, a2, F, _ = stability_exponents(beta, R=R, w_star=w_star)
    a = 0.5 * (a1 + a2)
    with np.errstate(divide="ignore"):
        return a * eps / (2.0 * F - a)


def collapse_probability(beta_i, t0, *, d: int, R: float, w_star: float, lr: float = 0.05,
                         alpha: float | None = None, schedule: str = "exp", growth: float = 1.0,
                         variance_lag: bool = False):
    """Sharp closed-form collapse probability ``P = erf(sqrt(d) eps e^{-I} / growth)``
    (DESIGN 4.2; ``growth = 1`` is the paper's formula, ``growth = sqrt(2)`` adds the growth of
    Delta while the pair becomes antipodal, :func:`antipodal_growth`).

    Args:
      beta_i: initial inverse temperature(s) in (0, 1] (array, broadcast with t0).
      t0: annealing time(s) in steps (> 0).
      d: dimension (integer >= 2). R: mode distance (> 0). w_star: heavy weight in (0, 1).
      lr: learning rate (> 0). alpha: ``beta_c R^2``; None uses :func:`derived_alpha`
        (pass :data:`PAPER_ALPHA` for the paper's value).
      schedule: see :func:`annealing_exponent`.
      growth: factor (>= 1) by which Delta has grown before the amplification phase starts.
      variance_lag: evaluate the growth rate on the simulation's lagging variance
        (:func:`lagged_annealing_exponent`) instead of the equilibrated ``1/beta``.
    Returns:
      P with the broadcast shape; ``erf(sqrt(d) eps / growth)`` wherever ``beta_i >= beta_c``.
    """
    d, R, w_star, lr = _common(d, R, w_star, lr)
    check_choice("schedule", schedule, _CLOSED_FORM_SCHEDULES)
    _arr("beta_i", beta_i, lo=0.0, hi=1.0, hi_open=False)
    _arr("t0", t0, lo=0.0)
    alpha = _alpha(alpha, R, w_star)
    growth = check_positive("growth", growth)
    if growth < 1.0:
        raise ValueError(f"growth must be >= 1 (Delta never shrinks), got {growth!r}")
    if variance_lag:
        I = lagged_annealing_exponent(beta_i, t0, R=R, lr=lr, alpha=alpha, schedule=schedule)
    else:
        I = annealing_exponent(beta_i, t0, R=R, lr=lr, alpha=alpha, schedule=schedule)
    return erf(math.sqrt(d) * collapse_epsilon(R, w_star) * np.exp(-I) / growth)


def annealing_time_for_probability(p, beta_i, *, d: int, R: float, w_star: float,
                                   lr: float = 0.05, alpha: float | None = None,
                                   schedule: str = "exp"):
    """Inverse of :func:`collapse_probability` in t0: the annealing time (steps) giving ``p``.

    ``I`` is proportional to t0 for every closed-form schedule, so
    ``t0 = ln(sqrt(d) eps / erfinv(p)) / (I / t0)``. Returns 0 where ``p >= erf(sqrt(d) eps)``
    (no annealing needed) and ``inf`` where annealing cannot help (``beta_i >= beta_c``).

    Args:
      p: target collapse probability/ies in (0, 1). Other arguments as in
        :func:`collapse_probability`.
    Returns:
      t0 (float array, steps) with the broadcast shape of (p, beta_i).
    """
    d, R, w_star, lr = _common(d, R, w_star, lr)
    check_choice("schedule", schedule, _CLOSED_FORM_SCHEDULES)
    p = _arr("p", p, lo=0.0, hi=1.0)
    b = _arr("beta_i", beta_i, lo=0.0, hi=1.0, hi_open=False)
    alpha = _alpha(alpha, R, w_star)
    need = np.log(math.sqrt(d) * collapse_epsilon(R, w_star) / erfinv(p))   # required I
    per = annealing_exponent(b, 1.0, R=R, lr=lr, alpha=alpha, schedule=schedule)
    need, per = np.broadcast_arrays(need, per)
    with np.errstate(divide="ignore"):
        t0 = np.where(need <= 0, 0.0, np.where(per > 0, need / np.where(per > 0, per, 1.0),
                                               np.inf))
    return t0


def hot_start_probability(rate, *, d: int, R: float, w_star: float, lr: float = 0.05,
                          alpha: float | None = None):
    """Limit of the exponential-schedule formula for ``beta_i -> 0`` at fixed per-step rate
    ``r = beta_i^(-1/t0)``: ``I -> 2 lr sqrt(alpha) / (sqrt(2 pi) ln r)``, so
    ``P = erf(sqrt(d) eps exp(-2 lr sqrt(alpha) / (sqrt(2 pi) ln r)))``: only the rate matters.

    Args:
      rate: per-step annealing factor(s) > 1.
    Returns:
      P with the shape of ``rate``.
    """
    d, R, w_star, lr = _common(d, R, w_star, lr)
    r = _arr("rate", rate, lo=1.0)
    alpha = _alpha(alpha, R, w_star)
    I = 2.0 * lr * math.sqrt(alpha) / (_SQRT_2PI * np.log(r))
    return erf(math.sqrt(d) * collapse_epsilon(R, w_star) * np.exp(-I))


def optimal_beta_i(t0, *, d: int, R: float, w_star: float, lr: float = 0.05,
                   alpha: float | None = None):
    """The beta_i that minimises the closed-form P at fixed t0 (exponential schedule).

    With ``x = sqrt(beta_i)`` and ``x_c = sqrt(beta_c)``, ``I = (R/sqrt(2pi)) tau0 (x_c - x)/(-ln x)``;
    ``dI/dx = 0`` gives ``ln x + x_c/x = 1``, i.e. ``x* = x_c / (-W_{-1}(-x_c/e))`` (Lambert W,
    lower branch). The optimum does not depend on t0 (I is proportional to t0); starting hotter
    wastes annealing time above the useful range, starting colder shortens the amplification.

    Args:
      t0: annealing time(s) in steps (> 0). Other arguments as in :func:`collapse_probability`.
    Returns:
      ``(beta_i_opt, p_min)``: float and array of the shape of ``t0``. ``beta_i_opt`` is capped at 1.
    """
    d, R, w_star, lr = _common(d, R, w_star, lr)
    t = _arr("t0", t0, lo=0.0)
    alpha = _alpha(alpha, R, w_star)
    x_c = math.sqrt(alpha) / R
    if x_c >= 1.0:
        beta_opt = 1.0
    else:
        w = -float(np.real(lambertw(-x_c / math.e, k=-1)))
        beta_opt = min((x_c / w) ** 2, 1.0)
    p = collapse_probability(beta_opt, t, d=d, R=R, w_star=w_star, lr=lr, alpha=alpha)
    return beta_opt, p


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


def _cell_paths(b, t, shape, n_iter, n_extra, schedule, var0, lr):
    """Steps per cell, the inverse temperatures (C, T) and the variances (C, T) of every cell:
    the simulation's deterministic variance map ``v <- v (1 - lr w (1 - 1/(beta v)))^2`` from
    ``var0`` (default 1/beta_i), the same for every run of a cell (it does not involve the means).
    """
    if n_iter is None:
        n_it = np.ceil(t).astype(int) + n_extra
    else:
        n_it = np.broadcast_to(np.asarray(n_iter), shape).ravel()
        if not np.all(n_it == np.round(n_it)) or np.any(n_it < 0):
            raise ValueError(f"n_iter must be integers >= 0, got {n_iter!r}")
        n_it = n_it.astype(int)
    T = int(n_it.max())
    steps = np.arange(max(T, 1), dtype=float)
    fn = SCHEDULES[schedule]
    betas = np.asarray(fn(steps[None, :], beta_i=b[:, None], t0=t[:, None]), float)  # (C, T)
    betas = np.broadcast_to(betas, (b.size, steps.size))
    if var0 is None:
        v0 = 1.0 / betas[:, 0]
    else:
        v0 = np.broadcast_to(_arr("var0", var0, lo=0.0), shape).ravel()
    v = np.empty_like(betas)
    v[:, 0] = v0
    for k in range(1, steps.size):
        bb = betas[:, k - 1]
        v[:, k] = v[:, k - 1] * (1.0 - lr * 0.5 * (1.0 - 1.0 / (bb * v[:, k - 1]))) ** 2
    return n_it, betas, v


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
