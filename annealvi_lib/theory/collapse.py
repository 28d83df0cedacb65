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
  :func:`annealvi_lib.theory.propagated.stochastic_collapse_probability` adds it (in-span diffusion and perpendicular
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

Beyond the closed form, :mod:`annealvi_lib.theory.propagated` integrates the expected discrete JKO
map with exact initial draws (ODE-propagated) and adds the finite-batch gradient noise.
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

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf, erfinv, lambertw

from .._validate import check_choice, check_int_at_least, check_open_unit, check_positive
from ..models.schedules import SCHEDULES
from . import ode as theory

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
    "symmetric_branch",
    "linear_tilt",
    "antipodal_growth",
    "vanilla_probability",
    "lagged_annealing_exponent",
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
      beta_c). Uses :func:`annealvi_lib.theory.ode.f` and the quadratures of :mod:`annealvi_lib.theory.ode`.
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
