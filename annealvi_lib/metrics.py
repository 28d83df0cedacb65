"""Run-level metrics of a trained sampler (collapse criterion, mode masses, ESS) and the
statistics of a grid cell (Wilson and Newcombe intervals, undecided runs, z-scores).

All functions are host-side NumPy post-processing of samples (they accept NumPy or JAX arrays),
vectorised over leading "run" axes. Non-finite runs are *failed*: they are flagged and never
classified as collapsed or not (DESIGN section 7).

The collapse criterion of the RealNVP study: project flow samples on the heavy-mode direction,
``y = <mu*, x>``. The target's projection has std ``sqrt(1 + 4 w*(1-w*) R^2)`` (2.6 for R = 3,
w* = 0.8); one mode alone has std 1. A run is *collapsed* when ``std(y) < 1.6``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ._validate import check_open_unit, check_positive

__all__ = [
    "COLLAPSE_STD",
    "target_projection_std",
    "failed_runs",
    "divergence_limits",
    "collapse_flags",
    "mass_plus",
    "ess_fraction",
    "run_summary",
    "wilson_interval",
    "difference_interval",
    "collapse_rate",
    "SETTLED_S",
    "UNDECIDED_MAX",
    "summary_arrays",
    "undecided_counts",
    "undecided_fraction",
    "z_scores",
]

#: Threshold on std(<mu*, x>) below which a run counts as collapsed (the paper's 1.6).
COLLAPSE_STD = 1.6
#: A flow whose projected spread exceeds this factor times the tempered target's has diverged.
SPREAD_FACTOR = 10.0
#: A flow whose KL estimate exceeds this many nats per dimension has diverged (a trained or
#: freshly initialised flow is within a few nats per dimension of the targets used here).
KL_PER_DIM_MAX = 100.0


def divergence_limits(d: int, R: float, w_star: float, beta: float = 1.0) -> dict:
    """``max_std`` and ``max_kl`` for :func:`run_summary`: far outside any stable run.

    ``max_std = SPREAD_FACTOR * sqrt(1/beta + 4 w*(1-w*) R^2)`` (the tempered target's spread
    along mu* is at most that without the factor) and ``max_kl = KL_PER_DIM_MAX * d``.
    """
    w = check_open_unit("w_star", w_star)
    R = check_positive("R", R)
    spread = math.sqrt(1.0 / float(beta) + 4.0 * w * (1.0 - w) * R * R)
    return {"max_std": SPREAD_FACTOR * spread, "max_kl": KL_PER_DIM_MAX * float(d)}


def target_projection_std(R: float, w_star: float) -> float:
    """Std of ``<mu*, x>`` under the target: ``sqrt(1 + 4 w*(1-w*) R^2)`` (mixture variance)."""
    R = check_positive("R", R)
    w = check_open_unit("w_star", w_star)
    return math.sqrt(1.0 + 4.0 * w * (1.0 - w) * R * R)


def failed_runs(*arrays) -> np.ndarray:
    """True for runs with any non-finite value: each array has shape (runs, ...) or (runs,)."""
    if not arrays:
        raise ValueError("failed_runs needs at least one array")
    out = None
    for a in arrays:
        a = np.asarray(a, dtype=float)
        bad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1) if a.ndim else ~np.isfinite(a)
        out = bad if out is None else out | bad
    return out


def collapse_flags(proj_std, threshold: float = COLLAPSE_STD):
    """Classify runs by the std of their projections: returns ``(collapsed, failed)`` bool arrays.

    Args:
      proj_std: std of ``<mu*, x>`` per run, any shape.
      threshold: collapse iff ``proj_std < threshold`` (> 0; default 1.6).
    Returns:
      ``failed = ~isfinite(proj_std)``; ``collapsed = (proj_std < threshold) & ~failed``.
    """
    threshold = check_positive("threshold", threshold)
    s = np.asarray(proj_std, dtype=float)
    failed = ~np.isfinite(s)
    with np.errstate(invalid="ignore"):
        collapsed = np.where(failed, False, s < threshold)
    return collapsed, failed


def mass_plus(proj) -> np.ndarray:
    """Fraction of samples on the heavy side ``<mu*, x> > 0``; proj shape (..., n) -> (...).

    Compare with w*: a two-mode fit has mass_plus near w*, a collapse onto the heavy mode near
    1, onto the light mode near 0. Non-finite inputs give NaN.
    """
    p = np.asarray(proj, dtype=float)
    m = np.mean(p > 0, axis=-1)
    return np.where(np.isfinite(p).all(axis=-1), m, np.nan)


def ess_fraction(log_w) -> np.ndarray:
    """Normalised importance-sampling effective sample size ``(sum w)^2 / (n sum w^2)`` in (0, 1].

    Args:
      log_w: log importance weights ``log pi(x) - log q(x)`` (any additive constant), shape
        (..., n), x ~ q.
    Returns:
      shape (...); 1 means q = pi; about (mass of the mode covered) for a collapsed q; NaN if any
      log-weight is non-finite. Computed in float64 after subtracting the max (no overflow).
    """
    lw = np.asarray(log_w, dtype=np.float64)
    n = lw.shape[-1]
    ok = np.isfinite(lw).all(axis=-1)
    lw = np.where(np.isfinite(lw), lw, 0.0)
    lw = lw - lw.max(axis=-1, keepdims=True)
    w = np.exp(lw)
    ess = w.sum(-1) ** 2 / (n * (w * w).sum(-1))
    return np.where(ok, ess, np.nan)


def run_summary(proj, log_w, threshold: float = COLLAPSE_STD, max_std: float = math.inf,
                max_kl: float = math.inf) -> dict[str, np.ndarray]:
    """Per-run metrics from flow samples.

    Args:
      proj: ``<mu*, x>`` of n samples per run, shape (runs, n).
      log_w: importance log-weights ``log pi(x) - log q(x)`` of the same samples, shape (runs, n).
      threshold: collapse threshold on std(proj).
      max_std, max_kl: a run whose std(proj) or KL estimate exceeds these has *diverged* and
        counts as failed (see :func:`divergence_limits`; default: no limit).
    Returns:
      dict of arrays of shape (runs,): ``collapsed``, ``failed`` (bool), ``proj_std``,
      ``proj_mean``, ``mass_plus``, ``ess``, ``kl`` (= -mean log_w: the KL(q || pi) when log pi is
      normalised). A run with any non-finite sample or weight, or beyond ``max_std`` /
      ``max_kl``, is failed (its metrics are NaN).
    """
    proj = np.asarray(proj, dtype=np.float64)
    log_w = np.asarray(log_w, dtype=np.float64)
    if proj.ndim != 2 or log_w.shape != proj.shape:
        raise ValueError(f"proj and log_w must both have shape (runs, n), got {proj.shape}, "
                         f"{log_w.shape}")
    with np.errstate(invalid="ignore", over="ignore"):
        std_all, kl_all = proj.std(axis=-1), -log_w.mean(axis=-1)
        failed = failed_runs(proj, log_w) | (std_all > max_std) | (kl_all > max_kl)
        std = np.where(failed, np.nan, std_all)
        mean = np.where(failed, np.nan, proj.mean(axis=-1))
        kl = np.where(failed, np.nan, kl_all)
    collapsed, _ = collapse_flags(std, threshold)
    return {"collapsed": collapsed, "failed": failed, "proj_std": std, "proj_mean": mean,
            "mass_plus": np.where(failed, np.nan, mass_plus(proj)),
            "ess": np.where(failed, np.nan, ess_fraction(log_w)), "kl": kl}


def wilson_interval(k, n, z: float = 1.96):
    """Wilson score interval for a binomial proportion (vectorised).

    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``p = k/n``.

    Args:
      k: successes, integer array-like (0 <= k <= n).
      n: trials, integer array-like (>= 0), broadcast with k.
      z: normal quantile (> 0); 1.96 for 95 %.
    Returns:
      ``(lo, hi)`` arrays; ``(0, 1)`` where ``n == 0`` (no information).
    """
    z = check_positive("z", z)
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    if np.any(~np.isfinite(k)) or np.any(~np.isfinite(n)):
        raise ValueError("k and n must be finite")
    if np.any(n < 0) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need 0 <= k <= n with n >= 0, got k={k!r}, n={n!r}")
    k, n = np.broadcast_arrays(k, n)
    empty = n == 0
    nn = np.where(empty, 1.0, n)
    p = k / nn
    z2 = z * z
    centre = (p + z2 / (2 * nn)) / (1 + z2 / nn)
    half = z * np.sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn)) / (1 + z2 / nn)
    # the interval always contains p; rounding can put a bound 1 ulp on the wrong side of it
    # (k = n gives hi = 0.9999999999999999), which plots of p -+ error bars reject
    lo = np.where(empty, 0.0, np.clip(np.minimum(centre - half, p), 0.0, 1.0))
    hi = np.where(empty, 1.0, np.clip(np.maximum(centre + half, p), 0.0, 1.0))
    return lo, hi


def difference_interval(k1, n1, k2, n2, z: float = 1.96):
    """Newcombe's hybrid score interval for the difference of two proportions
    ``p1 - p2 = k1/n1 - k2/n2`` (Newcombe 1998, method 10), built from the two Wilson intervals:
    ``L = D - sqrt((p1 - l1)^2 + (u2 - p2)^2)``, ``U = D + sqrt((u1 - p1)^2 + (p2 - l2)^2)``.

    It treats the two samples as independent; for paired arms (same keys) whose outcomes are
    positively correlated it is conservative. Coverage is close to nominal down to n ~ 10 and
    at p = 0 or 1, where the plain Wald interval fails.

    Args:
      k1, n1, k2, n2: successes and trials of the two samples (0 <= k <= n, n >= 1).
      z: normal quantile; 1.96 for 95 %.
    Returns:
      ``(d, lo, hi)``: the difference and its interval (floats or arrays).
    """
    n1 = np.asarray(n1, float)
    n2 = np.asarray(n2, float)
    if np.any(n1 < 1) or np.any(n2 < 1):
        raise ValueError(f"n1 and n2 must be >= 1, got {n1!r}, {n2!r}")
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    p1 = np.asarray(k1, float) / n1
    p2 = np.asarray(k2, float) / n2
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, lo, hi


def collapse_rate(collapsed, failed, z: float = 1.96) -> dict[str, np.ndarray]:
    """Collapse probability over the non-failed runs (last axis), with its Wilson interval.

    Returns a dict with ``k`` (collapsed), ``n`` (non-failed), ``n_failed``, ``p`` (k/n, NaN if
    n = 0), ``lo``, ``hi``; shapes are those of the inputs without the last axis.
    """
    c = np.asarray(collapsed, dtype=bool)
    f = np.asarray(failed, dtype=bool)
    if c.shape != f.shape:
        raise ValueError(f"collapsed and failed must have the same shape, got {c.shape}, {f.shape}")
    k = np.sum(c & ~f, axis=-1)
    n = np.sum(~f, axis=-1)
    lo, hi = wilson_interval(k, n, z)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    return {"k": k, "n": n, "n_failed": np.sum(f, axis=-1), "p": p, "lo": lo, "hi": hi}


#: A run has *settled* when its final overlap is this close to one of the two outcomes,
#: ``|s| >= 0.9`` (collapsed runs approach s = +1, covering runs s = -1); below it the run is
#: still *undecided* and the sign of its s is not yet an outcome.
SETTLED_S = 0.9


#: A grid cell is reported as truncated when more than this fraction of its finished runs is
#: still undecided when the runs stop.
UNDECIDED_MAX = 0.1


def summary_arrays(summary: Sequence[dict]) -> dict[str, np.ndarray]:
    """Grid summary rows -> dict of arrays shaped (n_beta, n_t0) plus the axes ``beta_is``, ``t0s``."""
    betas = np.array(sorted({r["beta_i"] for r in summary}))
    t0s = np.array(sorted({r["t0"] for r in summary}))
    out = {k: np.full((betas.size, t0s.size), np.nan) for k in
           ("p_collapse", "ci_low", "ci_high", "n_runs", "n_failed", "n_collapsed")}
    for r in summary:
        i, j = np.searchsorted(betas, r["beta_i"]), np.searchsorted(t0s, r["t0"])
        for k in out:
            out[k][i, j] = r[k]
    out["beta_is"], out["t0s"] = betas, t0s
    return out


def undecided_counts(runs: Sequence[dict], beta_is, t0s) -> np.ndarray:
    """Finished runs still undecided (final ``|s| < SETTLED_S``) per cell, shape
    ``(len(beta_is), len(t0s))``, from per-run rows with keys ``beta_i``, ``t0``, ``s`` (e.g.
    :class:`annealvi_lib.experiments.grid.GridResult` ``.runs``; axes as in :func:`summary_arrays`)."""
    out = np.zeros((len(beta_is), len(t0s)))
    for run in runs:
        s_end = float(run["s"])
        if np.isfinite(s_end) and abs(s_end) < SETTLED_S:
            out[np.searchsorted(beta_is, run["beta_i"]), np.searchsorted(t0s, run["t0"])] += 1
    return out


def undecided_fraction(arrays: dict) -> np.ndarray:
    """``n_undecided / finished runs`` per cell of :func:`summary_arrays` output that carries
    ``n_undecided`` (see :func:`annealvi_lib.experiments.ch3_collapse_probability.mc_grid`)."""
    return arrays["n_undecided"] / np.maximum(arrays["n_runs"] - arrays["n_failed"], 1)


def z_scores(k, n, p_theory, theory_se=0.0):
    """|p_hat - p_theory| in units of the binomial standard error of the measured proportion
    (combined in quadrature with ``theory_se``, the sampling error of a simulated theory).

    The standard error uses the smoothed estimate ``p~ = (k + 1) / (n + 2)`` so that cells with
    0 or n collapses (where the plain SE is 0) get a finite, conservative-free scale.
    """
    k = np.asarray(k, float)
    n = np.asarray(n, float)
    p_hat = k / n
    p_s = (k + 1) / (n + 2)
    se = np.sqrt(p_s * (1 - p_s) / n + np.asarray(theory_se, float) ** 2)
    return np.abs(p_hat - np.asarray(p_theory, float)) / se
