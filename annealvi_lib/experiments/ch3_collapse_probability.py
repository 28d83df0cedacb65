"""Chapter 3's computations: the Monte-Carlo grid, both theories on it, the fitted alpha, the
sampler validation and the sensitivity studies -- and the chapter's registered figures.

Every function takes the preset's :class:`~annealvi_lib.config.GMMGridConfig`; Monte-Carlo
results come from the cached grid runner, so the notebook and ``python -m annealvi_lib figures``
share them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import NamedTuple

import jax
import numpy as np

from ..theory import collapse as C
from ..theory import ode as theory
from ..figures.collapse_plots import (SETTLED_S, plot_heatmap, plot_mechanism, plot_slices,
                             plot_stability, plot_symmetric_branch, plot_vs_rate, summary_arrays,
                             undecided_counts, z_scores)
from ..config import GMMGridConfig, Preset, grid_beta
from ..figures.registry import register
from .grid import run_grid
from ..models.schedules import Schedule

__all__ = ["TheoryGrid", "default_workers", "mc_grid", "theory_grid", "theory_rows", "closed_family", "fit_alpha_bootstrap",
           "mechanism_trajectories", "stability_scan", "cell_config", "validation_rows",
           "sensitivity_rows", "plot_batch_sensitivity"]


def default_workers(preset_name: str) -> int:
    """Worker processes for grid runs: one per core (max 2) except at the quick preset, where
    spawning costs more than it saves."""
    return 1 if preset_name == "quick" else min(2, os.cpu_count() or 1)


def mc_grid(G: GMMGridConfig, workers: int = 1, progress: bool | None = None):
    """Run (or load) the Monte-Carlo grid; returns ``(summary_arrays, seconds)``. The arrays
    also hold ``n_undecided`` (n_beta, n_t0): finished runs whose final ``|s| < SETTLED_S`` (:mod:`annealvi_lib.figures.collapse_plots`),
    classified by the sign of ``s`` although they have not settled when the run stops."""
    t = time.perf_counter()
    res = run_grid("gmm", G, workers=workers, progress=progress)
    A = summary_arrays(res.summary)
    A["n_undecided"] = undecided_counts(res.runs, A["beta_is"], A["t0s"])
    return A, time.perf_counter() - t


class TheoryGrid(NamedTuple):
    """The theories on the grid's (beta_i, t0) cells (arrays of shape (n_beta, n_t0))."""

    BB: np.ndarray
    TT: np.ndarray
    p_closed: np.ndarray          # closed form, derived alpha
    p_closed_paper: np.ndarray    # closed form, alpha = 0.608
    p_ode: np.ndarray             # ODE-propagated, with variance lag
    p_ode_se: np.ndarray
    closed_ms: float
    ode_seconds: float
    p_closed_corrected: np.ndarray   # closed form with sqrt(2) growth and variance lag, derived alpha
    p_stoch: np.ndarray           # finite-batch theory at the grid's B and sampling protocol
    p_stoch_se: np.ndarray
    p_stoch_undecided: np.ndarray  # its fraction of runs with |s| < SETTLED_S at the end
    stoch_seconds: float


def theory_grid(G: GMMGridConfig, seed: int = 1, batch: int | None = None,
                sampling: str | None = None, with_stochastic: bool = True) -> TheoryGrid:
    """Every theory on the grid: the closed form (paper's alpha, derived alpha, and with the
    sqrt(2) growth and the variance lag), the ODE-propagated probability and the finite-batch
    theory (the ODE-propagated and the finite-batch theory share their initial draws).

    Args:
      G: the grid configuration (cells, problem, run length, sample counts).
      seed: PRNG seed of the theories' initial draws and noise.
      batch, sampling: override the problem's batch size and sampling protocol for the
        finite-batch theory (default: the grid's own).
      with_stochastic: compute the finite-batch theory (else its fields are NaN, its time 0).
    """
    p = G.problem
    batch = p.batch if batch is None else batch
    sampling = p.sampling if sampling is None else sampling
    BB, TT = np.meshgrid(np.array(G.beta_is), np.array(G.t0s), indexing="ij")
    kw = dict(d=p.d, R=p.R, w_star=p.w_star, lr=p.lr)
    C.derived_alpha(p.R, p.w_star)                     # compile/memoise outside the timing
    t = time.perf_counter()
    p_closed = C.collapse_probability(BB, TT, **kw)
    closed_ms = 1e3 * (time.perf_counter() - t)
    p_paper = C.collapse_probability(BB, TT, alpha=C.PAPER_ALPHA, **kw)
    p_corr = C.collapse_probability(BB, TT, growth=math.sqrt(2.0), variance_lag=True, **kw)
    t = time.perf_counter()
    ode = C.ode_collapse_probability(BB, TT, key=jax.random.key(seed), n_extra=G.n_iter_extra,
                                     n_samples=G.ode_samples, with_variance=True, **kw)
    ode_s = time.perf_counter() - t
    if not with_stochastic:
        nan = np.full(BB.shape, np.nan)
        return TheoryGrid(BB, TT, p_closed, p_paper, ode.p, ode.se, closed_ms, ode_s, p_corr,
                          nan, nan, nan, 0.0)
    t = time.perf_counter()
    st = C.stochastic_collapse_probability(BB, TT, batch=batch, sampling=sampling,
                                           key=jax.random.key(seed), n_extra=G.n_iter_extra,
                                           n_samples=G.stochastic_samples, settled_s=SETTLED_S,
                                           **kw)
    return TheoryGrid(BB, TT, p_closed, p_paper, ode.p, ode.se, closed_ms, ode_s, p_corr, st.p,
                      st.se, st.undecided, time.perf_counter() - t)


#: Columns of ``theory_grid.csv`` (``python -m annealvi_lib theory``).
THEORY_COLUMNS = ("beta_i", "t0", "p_closed", "p_closed_corrected", "p_ode", "p_stochastic")


def theory_rows(T: TheoryGrid) -> list[dict]:
    """One row per cell with :data:`THEORY_COLUMNS` (closed form = the paper's formula with the
    derived alpha; corrected = with the sqrt(2) growth and the variance lag)."""
    rows = []
    for i in range(T.BB.shape[0]):
        for j in range(T.BB.shape[1]):
            rows.append(dict(zip(THEORY_COLUMNS, (
                float(T.BB[i, j]), float(T.TT[i, j]), float(T.p_closed[i, j]),
                float(T.p_closed_corrected[i, j]), float(T.p_ode[i, j]), float(T.p_stoch[i, j])))))
    return rows


def closed_family(T: TheoryGrid, G: GMMGridConfig, alphas, growth: float = 1.0,
                  variance_lag: bool = False) -> np.ndarray:
    """The closed form on the grid for every alpha of ``alphas``: shape (n_alpha, n_beta, n_t0).

    ``growth`` and ``variance_lag`` select the variant (see
    :func:`annealvi_lib.theory.collapse.collapse_probability`).
    """
    from scipy.special import erf

    p = G.problem
    alphas = np.asarray(alphas, float)
    if variance_lag:
        I = C.lagged_annealing_exponent(T.BB, T.TT, R=p.R, lr=p.lr, alpha=alphas)
    else:
        I = np.stack([C.annealing_exponent(T.BB, T.TT, R=p.R, lr=p.lr, alpha=a) for a in alphas])
    x = math.sqrt(p.d) * C.collapse_epsilon(p.R, p.w_star) / growth
    return erf(x * np.exp(-I))


def fit_alpha_bootstrap(k, n, T: TheoryGrid, G: GMMGridConfig, growth: float = 1.0, mask=None,
                        alphas=np.linspace(0.2, 2.0, 1801), n_boot: int = 400, seed: int = 0,
                        variance_lag: bool = False):
    """Maximum-likelihood alpha of the closed form (with ``growth``, see
    :func:`annealvi_lib.theory.collapse.collapse_probability`; ``variance_lag`` too) given binomial counts ``k`` of ``n`` per
    cell, with a 95% interval that does not assume the closed form is true: a percentile
    bootstrap over runs (each cell's count redrawn from ``Binomial(n, k/n)``, the fit redone).

    Args:
      k, n: counts per cell, shape (n_beta, n_t0) -- the Monte-Carlo grid's collapsed runs and
        finished runs, or the ODE-propagated probabilities times their number of initial
        conditions. mask: optional boolean cells to use. seed: bootstrap seed.
    Returns ``(alpha_hat, low, high, mean_abs_z)``; ``mean_abs_z`` is the fit quality, the mean
    binomial z-score of the fitted closed form over the selected cells.
    """
    p = G.problem
    sel = np.ones(np.shape(k), bool) if mask is None else np.asarray(mask, bool)
    k, n = np.asarray(k, float)[sel], np.asarray(n, float)[sel]
    if k.size == 0:                        # no cell selected (e.g. a tiny preset)
        return math.nan, math.nan, math.nan, math.nan
    q = closed_family(T, G, alphas, growth=growth, variance_lag=variance_lag)[:, sel]
    q = np.clip(q, 1e-9, 1 - 1e-9)
    lq, l1q = np.log(q), np.log1p(-q)                           # (n_alpha, n_cells)

    def best(kk):                                               # kk: (..., n_cells)
        return np.argmin(-(kk @ lq.T + (n - kk) @ l1q.T), axis=-1)

    i_hat = int(best(k))
    rng = np.random.default_rng(seed)
    kb = rng.binomial(n.astype(int), np.clip(k / np.maximum(n, 1), 0, 1), size=(n_boot, k.size))
    boot = alphas[best(kb.astype(float))]
    mean_z = float(np.mean(z_scores(k, n, q[i_hat])))
    return (float(alphas[i_hat]), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)),
            mean_z)


def mechanism_trajectories(G: GMMGridConfig, x0=(0.02, 0.0, -0.05), log10_beta_r2=-3.0,
                           t0s=(100, 800), extra=300):
    """ODE trajectories from one initial condition for a fast and a slow schedule."""
    p = G.problem
    beta_i = 10.0**log10_beta_r2 / p.R**2
    out = {}
    for t0 in t0s:
        label = f"{'fast' if t0 == min(t0s) else 'slow'} annealing, $t_0={t0}$"
        out[label] = theory.integrate_ode(np.asarray(x0, np.float32), Schedule("exp", beta_i, t0),
                                          t0 + extra, R=p.R, w_star=p.w_star, lr=p.lr)
    return out


def stability_scan(G: GMMGridConfig, n: int = 200):
    """``(betas, a1, a2, F, lam_rel)`` over ``beta R^2`` in [1e-3, 10]."""
    p = G.problem
    betas = np.logspace(-3, 1, n) / p.R**2
    a1, a2, F, lam = C.stability_exponents(betas, R=p.R, w_star=p.w_star)
    return betas, a1, a2, F, lam


def cell_config(G: GMMGridConfig, log10_beta_r2: float, t0: float, n_seeds: int, **changes):
    """A one-cell copy of the grid configuration (``batch=`` changes the problem's batch)."""
    problem = G.problem
    if "batch" in changes:
        problem = dataclasses.replace(problem, batch=changes.pop("batch"))
    return dataclasses.replace(G, log10_beta_r2=(log10_beta_r2,), t0s=(float(t0),),
                               n_seeds=n_seeds, problem=problem, **changes)


def validation_rows(G: GMMGridConfig, workers: int = 1) -> list[dict]:
    """Fast against exact sampler on ``G.validation_cells`` (independent seeds per sampler)."""
    R = G.problem.R
    cells = [(grid_beta(k, R**2), float(t0)) for k, t0 in G.validation_cells]
    cfg = dataclasses.replace(G, n_seeds=G.validation_seeds)
    # independent samples: the exact sampler uses master seed + 1 (with the same seed both
    # samplers would start from identical initial statistics and the binomial SE of the
    # difference below, which assumes independence, would be wrong). All cells of a sampler go
    # in one call so that worker processes share them.
    out = {s: run_grid("gmm", dataclasses.replace(cfg, seed=G.seed + off), sampler=s,
                       workers=workers, cells=cells).summary
           for s, off in (("fast", 0), ("exact", 1))}
    rows = []
    for (k, t0), rf, re in zip(G.validation_cells, out["fast"], out["exact"]):
        kf, nf = rf["n_collapsed"], rf["n_runs"] - rf["n_failed"]
        ke, ne = re["n_collapsed"], re["n_runs"] - re["n_failed"]
        pf, pe = kf / nf, ke / ne
        se = math.sqrt(max(pf * (1 - pf) / nf + pe * (1 - pe) / ne, 1e-12))
        rows.append({"log10(beta_i R^2)": k, "t0": t0, "fast": f"{kf}/{nf}",
                     "exact": f"{ke}/{ne}",
                     "fast 95% CI": f"[{rf['ci_low']:.2f}, {rf['ci_high']:.2f}]",
                     "exact 95% CI": f"[{re['ci_low']:.2f}, {re['ci_high']:.2f}]",
                     "|dp|": abs(pf - pe), "|dp|/SE": abs(pf - pe) / se})
    return rows


def sensitivity_rows(G: GMMGridConfig, workers: int = 1) -> list[dict]:
    """Collapse rates on ``G.sensitivity_cells`` for each batch size and each run length."""
    p = G.problem
    rows = []
    for k, t0 in G.sensitivity_cells:
        b_i = grid_beta(k, p.R**2)
        p_cf = float(C.collapse_probability(b_i, t0, d=p.d, R=p.R, w_star=p.w_star, lr=p.lr))
        # the B -> infinity limit of the simulation: the ODE-propagated probability
        p_ode = float(C.ode_collapse_probability(
            np.array([[b_i]]), np.array([[float(t0)]]), d=p.d, R=p.R, w_star=p.w_star, lr=p.lr,
            key=jax.random.key(1), n_extra=G.n_iter_extra, n_samples=G.ode_samples,
            with_variance=True).p.ravel()[0])
        settings = [(B, G.n_iter_extra) for B in G.sensitivity_batches]
        settings += [(p.batch, e) for e in G.sensitivity_extras if e != G.n_iter_extra]
        for B, extra in settings:
            cfg = cell_config(G, k, t0, G.sensitivity_seeds, batch=B, n_iter_extra=extra)
            r = run_grid("gmm", cfg, workers=workers).summary[0]
            p_st = float(C.stochastic_collapse_probability(
                np.array([b_i]), np.array([float(t0)]), d=p.d, R=p.R, w_star=p.w_star, lr=p.lr,
                batch=B, sampling=p.sampling, key=jax.random.key(1), n_extra=extra,
                n_samples=G.stochastic_samples).p[0])
            rows.append({"log10(beta_i R^2)": k, "t0": t0, "B": B, "steps after t0": extra,
                         "p_collapse": r["p_collapse"], "ci_low": r["ci_low"],
                         "ci_high": r["ci_high"], "closed form": p_cf, "ODE-propagated": p_ode,
                         "finite-batch theory": p_st})
    return rows


def vanilla_rows(G: GMMGridConfig, workers: int = 1, key_seed: int = 3) -> list[dict]:
    """The no-annealing row: beta = 1 throughout (variance 1 at the start) for each dimension in
    ``G.vanilla_dims``, ``G.vanilla_seeds`` runs of ``G.vanilla_steps`` steps (reduced sampler,
    cached), against ``Phi^2 + Phi^2`` (:func:`annealvi_lib.theory.collapse.vanilla_probability`), the
    closed form's ``erf(sqrt(d) eps)``, the ODE-propagated probability and the finite-batch theory
    at beta = 1 (NaN for d < 33)."""
    p = G.problem
    k_one = math.log10(p.R**2)                        # beta_i R^2 = R^2, i.e. beta_i = 1
    rows = []
    for dim in G.vanilla_dims:
        prob = dataclasses.replace(p, d=int(dim))
        cfg = dataclasses.replace(G, problem=prob, log10_beta_r2=(k_one,), t0s=(1.0,),
                                  n_iter_extra=G.vanilla_steps - 1, n_seeds=G.vanilla_seeds)
        res = run_grid("gmm", cfg, workers=workers)
        r = res.summary[0]
        ode = C.ode_collapse_probability(np.array([[1.0]]), np.array([[1.0]]), d=int(dim),
                                         R=p.R, w_star=p.w_star, lr=p.lr,
                                         key=jax.random.key(key_seed),
                                         n_extra=G.vanilla_steps - 1, n_samples=G.ode_samples,
                                         with_variance=True)
        eps = C.collapse_epsilon(p.R, p.w_star)
        p_st = math.nan                    # the model's chi^2 draws need d >= 33
        if dim >= 33:
            p_st = float(C.stochastic_collapse_probability(
                np.array([1.0]), np.array([1.0]), d=int(dim), R=p.R, w_star=p.w_star, lr=p.lr,
                batch=p.batch, sampling=p.sampling, key=jax.random.key(key_seed),
                n_iter=G.vanilla_steps, n_samples=G.stochastic_samples,
                var0=1.0).p[0])
        rows.append({"d": int(dim), "runs": r["n_runs"] - r["n_failed"],
                     "p_collapse": r["p_collapse"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "independent means": C.vanilla_probability(d=int(dim), R=p.R, w_star=p.w_star),
                     "closed form": float(math.erf(math.sqrt(dim) * eps)),
                     "ODE-propagated": float(ode.p.ravel()[0]),
                     "finite-batch theory": p_st,
                     "undecided": int(undecided_counts(res.runs, [r["beta_i"]], [r["t0"]])[0, 0])})
    return rows


def plot_batch_sensitivity(rows: list[dict], n_iter_extra: int, sampling: str = "stratified"):
    """Collapse probability against B per cell (Wilson bars), with the finite-batch theory
    (solid), the ODE-propagated probability (dashed: the B -> infinity limit of the simulation)
    and the closed form (dotted)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.6, 3.8))
    sub = [r for r in rows if r["steps after t0"] == n_iter_extra]
    for cell in sorted({(r["log10(beta_i R^2)"], r["t0"]) for r in sub}):
        grp = sorted((r for r in sub if (r["log10(beta_i R^2)"], r["t0"]) == cell),
                     key=lambda r: r["B"])
        B = np.array([r["B"] for r in grp])
        p = np.array([r["p_collapse"] for r in grp])
        lo = np.array([r["ci_low"] for r in grp])
        hi = np.array([r["ci_high"] for r in grp])
        line = ax.errorbar(B, p, yerr=[p - lo, hi - p], fmt="o", capsize=3,
                           label=f"$\\log_{{10}}\\beta_iR^2={cell[0]:g}$, $t_0={cell[1]:g}$")
        c = line[0].get_color()
        if "finite-batch theory" in grp[0]:
            ax.plot(B, [r["finite-batch theory"] for r in grp], "-", lw=1.4, color=c)
        if "ODE-propagated" in grp[0]:
            ax.axhline(grp[0]["ODE-propagated"], ls="--", lw=1.2, color=c)
        ax.axhline(grp[0]["closed form"], ls=":", lw=1.2, color=c)
    ax.plot([], [], "k-", lw=1.4, label="finite-batch theory")
    ax.plot([], [], "k--", lw=1.2, label="ODE-propagated ($B\\to\\infty$)")
    ax.plot([], [], "k:", lw=1.2, label="closed form")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size $B$ (samples per component)" if sampling == "stratified"
                  else "batch size $B$ (samples in total, categorical)")
    ax.set_ylabel(r"$P_{\rm collapse}$")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# --------------------------------------------------------------------------------------------
# registered figures (python -m annealvi_lib figures ch3_*)
# --------------------------------------------------------------------------------------------

def _closed_iso(G):
    p = G.problem
    return lambda b, t: C.collapse_probability(b, t, d=p.d, R=p.R, w_star=p.w_star, lr=p.lr)


@register("ch3_mechanism", chapter=3, description="ODE runs showing amplification and collapse")
def fig_mechanism(preset: Preset):
    G = preset.gmm_grid
    return plot_mechanism(mechanism_trajectories(G), C.critical_beta(G.problem.R, G.problem.w_star),
                          G.problem.lr)


@register("ch3_stability", chapter=3, description="stability of the antipodal state against beta")
def fig_stability(preset: Preset):
    G = preset.gmm_grid
    betas, a1, _, _, lam = stability_scan(G)
    keep = betas <= 1.0                     # the physical range: beta never exceeds 1
    betas, a1, lam = betas[keep], a1[keep], lam[keep]
    R = G.problem.R
    return plot_stability(betas, a1, lam, R * np.sqrt(betas) / np.sqrt(2 * np.pi), R,
                          C.critical_beta(R, G.problem.w_star), C.PAPER_ALPHA)


def branch_scan(G: GMMGridConfig, n: int = 60):
    """``(beta / beta_c, m_b, linear tilt)`` on a log grid of beta / beta_c in [1e-2, 4]."""
    p = G.problem
    ratio = np.logspace(-2, np.log10(4.0), n)
    beta = ratio * C.critical_beta(p.R, p.w_star)
    return (ratio, C.symmetric_branch(beta, R=p.R, w_star=p.w_star),
            C.linear_tilt(beta, R=p.R, w_star=p.w_star))


@register("ch3_branch", chapter=3,
          description="tilt of the antipodal pair: exact symmetric branch and linear response")
def fig_branch(preset: Preset):
    return plot_symmetric_branch(*branch_scan(preset.gmm_grid))


@register("ch3_heatmap", chapter=3, description="Monte-Carlo collapse probability over (beta_i, t0)")
def fig_heatmap(preset: Preset):
    G = preset.gmm_grid
    A, _ = mc_grid(G, workers=default_workers(preset.name))
    return plot_heatmap(A, iso_fn=_closed_iso(G),
                        iso_label=r"closed form $P=0.5$ (derived $\alpha$)", R=G.problem.R)


def slice_theories(T: TheoryGrid) -> dict:
    """The theories drawn on the per-beta_i slices."""
    return {"closed form (derived $\\alpha$)": T.p_closed,
            "closed form ($\\alpha=0.608$)": T.p_closed_paper,
            "ODE-propagated": T.p_ode,
            "finite-batch theory": T.p_stoch}


@register("ch3_slices", chapter=3, description="per-beta_i slices: Monte Carlo against both theories")
def fig_slices(preset: Preset):
    G = preset.gmm_grid
    A, _ = mc_grid(G, workers=default_workers(preset.name))
    return plot_slices(A, slice_theories(theory_grid(G)), R=G.problem.R)


def hot_start_curve(G: GMMGridConfig):
    p = G.problem
    rates = np.logspace(np.log10(1.0005), np.log10(1.2), 200)
    return {r"hot-start limit (closed form, derived $\alpha$)":
            (rates, C.hot_start_probability(rates, d=p.d, R=p.R, w_star=p.w_star, lr=p.lr))}


#: Rows with beta_i <= HOT_FRACTION * beta_c count as hot starts for the hot-start limit
#: (beta_i -> 0 at fixed rate); rows between that and beta_c are neither hot nor cold.
HOT_FRACTION = 0.1


class RateAgreement(NamedTuple):
    """How the measured cells sit against the hot-start master curve (binomial z-scores, see
    :func:`annealvi_lib.figures.collapse_plots.z_scores`).

    ``n_hot``/``hot_within``: cells with beta_i <= HOT_FRACTION beta_c and those within 2 SE of
    the curve; ``hot_worst``: (log10 beta_i R^2, t0, measured, curve, z) of the hot cell farthest
    from it; ``n_rest``/``rest_above``: the other cells and those more than 2 SE above it.
    """

    n_hot: int
    hot_within: int
    hot_worst: tuple
    n_rest: int
    rest_above: int


def rate_agreement(A: dict, G: GMMGridConfig) -> RateAgreement:
    """Compare every cell of the grid ``A`` with the hot-start curve at its own rate."""
    from ..models.schedules import annealing_rate

    p = G.problem
    beta_c = C.critical_beta(p.R, p.w_star)
    BB, TT = np.meshgrid(A["beta_is"], A["t0s"], indexing="ij")
    curve = C.hot_start_probability(annealing_rate(BB, TT), d=p.d, R=p.R, w_star=p.w_star,
                                    lr=p.lr)
    n_ok = A["n_runs"] - A["n_failed"]
    z = z_scores(A["n_collapsed"], n_ok, curve)
    hot = BB <= HOT_FRACTION * beta_c
    rest = ~hot
    worst = (math.nan, math.nan, math.nan, math.nan, math.nan)
    if hot.any():
        zh = np.where(hot, z, -np.inf)
        i, j = np.unravel_index(np.argmax(zh), z.shape)
        worst = (float(np.log10(BB[i, j] * p.R**2)), float(TT[i, j]), float(A["p_collapse"][i, j]),
                 float(curve[i, j]), float(z[i, j]))
    above = (A["p_collapse"] > curve) & (z > 2)
    return RateAgreement(int(hot.sum()), int((hot & (z <= 2)).sum()), worst, int(rest.sum()),
                         int((rest & above).sum()))


@register("ch3_rate", chapter=3, description="collapse probability against the annealing rate")
def fig_rate(preset: Preset):
    G = preset.gmm_grid
    A, _ = mc_grid(G, workers=default_workers(preset.name))
    return plot_vs_rate(A, hot_start_curve(G), R=G.problem.R,
                        beta_c=C.critical_beta(G.problem.R, G.problem.w_star),
                        hot_fraction=HOT_FRACTION)


@register("ch3_batch", chapter=3, description="collapse probability against the batch size B")
def fig_batch(preset: Preset):
    G = preset.gmm_grid
    return plot_batch_sensitivity(sensitivity_rows(G, default_workers(preset.name)), G.n_iter_extra,
                                  G.problem.sampling)


def benchmark_summary() -> dict | None:
    """Sampler throughput from ``benchmarks/bench_gmm.py``'s JSON: ``results/`` (fresh, this
    machine) if present, else the reference measurements in ``benchmarks/reference/``.

    Returns ``None`` if neither exists, else a dict with seed-steps per second of the reduced
    sampler (grid entry point), the exact sampler (one seed per scan and 8 vmapped seeds, B = 1024
    and 8192) and the plain per-seed loop, plus the source file and the commit measured (``None``
    for files that predate recording it).
    """
    from ..paths import load_benchmark

    loaded = load_benchmark("bench_gmm")
    if loaded is None:
        return None
    rows, source = loaded[0]["rows"], loaded[1]

    def rate(sampler, mode, batch, n_seeds=None):
        for r in rows:
            if (r["sampler"], r["mode"], r["batch"]) == (sampler, mode, batch) and (
                    n_seeds is None or r["n_seeds"] == n_seeds) and r.get("key_impl",
                                                                           "threefry2x32") == "threefry2x32":
                return float(r["seed_steps_per_s"])
        return float("nan")

    out = {"source": source, "commit": loaded[0].get("commit"),
           "reduced_1024": rate("reduced_betas", "vmap", 1024),
           "reduced_8192": rate("reduced", "vmap", 8192),
           "exact_1024_s1": rate("exact", "vmap", 1024, 1),
           "exact_1024_s8": rate("exact", "vmap", 1024, 8),
           "exact_8192_s1": rate("exact", "vmap", 8192, 1),
           "loop_1024": rate("exact", "python_loop", 1024),
           "loop_8192": rate("exact", "python_loop", 8192)}
    return out


def sampler_versions() -> dict | None:
    """The reduced sampler before and after its rewrite, from ``benchmarks/bench_gmm.py
    --only-versions`` (``bench_reduced_versions.json``: fresh in the results cache if present,
    else the committed measurement in ``benchmarks/measured/``).

    Returns ``None`` if absent, else a dict: ``rows`` (one per protocol and total samples N, with
    the seed-steps per second of the landed sampler at its grid width and at 4 runs per call, of
    the new one, the two paired ratios and the paper grid's single-core minutes with the new
    one), ``profile`` (part -> microseconds per seed-step and share of a step), ``limit`` (the
    generator's words per second and an estimate of the bytes a step moves), ``per_value``
    (function -> ns per value), ``widths`` (runs per call -> seed-steps per second), ``machine``,
    ``source``, ``landed_commit``, ``commit`` (of the measurement), ``d``,
    ``paper_grid_seed_steps``.
    """
    from ..paths import load_benchmark

    loaded = load_benchmark("bench_reduced_versions")
    if loaded is None:
        return None
    data, source = loaded
    rows = data.get("rows", [])
    out_rows = []
    for total in sorted({r["total_samples"] for r in rows if "version" in r}):
        for sampling in ("stratified", "categorical"):
            sel = {r["mode"]: r for r in rows if r.get("total_samples") == total
                   and r.get("sampling") == sampling and "version" in r}
            new = next((r for m, r in sel.items() if m.startswith("new")), None)
            grid_w = next((r for m, r in sel.items() if m.startswith("landed")
                           and r["runs_per_call"] != 4), None)
            w4 = sel.get("landed_w4")
            if new is None or grid_w is None or w4 is None:
                continue
            out_rows.append({
                "sampling": sampling, "N": total, "B": new["batch"],
                "landed_grid_width": grid_w["runs_per_call"],
                "landed": grid_w["seed_steps_per_s"], "landed_w4": w4["seed_steps_per_s"],
                "new": new["seed_steps_per_s"],
                "ratio": new[f"ratio_vs_landed_w{grid_w['runs_per_call']}"],
                "ratio_w4": new["ratio_vs_landed_w4"],
                "paper_grid_min_new": new["paper_grid_minutes"],
                "paper_grid_min_landed": grid_w["paper_grid_minutes"],
                "rounds": new["rounds"]})
    profile = {r["part"]: (r["us_per_seed_step"], r["share_of_step"]) for r in rows
               if r.get("mode") == "profile"}
    per_value = {r["part"]: r["ns_per_value"] for r in rows if r.get("mode") == "per_value"}
    widths = {r["runs_per_call"]: r["seed_steps_per_s"] for r in rows if r.get("mode") == "width"}
    limit = next((r for r in rows if r.get("mode") == "limit"), {})
    landed_commit = next((r["commit"] for r in rows if r.get("version") == "landed"), "")
    return {"rows": out_rows, "profile": profile, "per_value": per_value, "widths": widths,
            "limit": limit, "machine": data.get("machine", {}), "source": source,
            "landed_commit": landed_commit, "commit": data.get("commit", "unknown"),
            "d": data.get("d"), "paper_grid_seed_steps": data.get("paper_grid_seed_steps")}


# --------------------------------------------------------------------------------------------
# batch-size scan on the hottest row (archived: too long for a CPU book build)
# --------------------------------------------------------------------------------------------

#: Archive folder of the batch-size scan (``python -m annealvi_lib batch-scan`` writes it).
BSCAN_ARCHIVE = "bscan_hottest_row"


def batch_scan_settings(G: GMMGridConfig) -> list[tuple[int, str]]:
    """The (batch, sampling) points of the scan: every ``G.bscan_batches`` in the grid's own
    convention, plus the other protocol at the grid's batch (categorical: the same number of
    samples in total, ``2 B``; stratified: ``B / 2`` per component) to measure the protocol's
    effect on this row."""
    p = G.problem
    pts = [(int(B), p.sampling) for B in G.bscan_batches]
    if p.sampling == "stratified":
        pts.append((2 * p.batch, "categorical"))
    else:
        pts.append((max(p.batch // 2, 1), "stratified"))
    return pts


def batch_scan_config(G: GMMGridConfig) -> dict:
    """What the scan's numbers depend on (compared with an archive's provenance)."""
    return {"problem": dataclasses.asdict(G.problem), "log10_beta_r2": G.bscan_log10,
            "t0s": list(G.bscan_t0s), "points": [list(x) for x in batch_scan_settings(G)],
            "n_seeds": G.bscan_seeds, "n_iter_extra": G.n_iter_extra, "seed": G.seed,
            "sampler": G.sampler}


def run_batch_scan(G: GMMGridConfig, workers: int = 1, progress: bool | None = None,
                   cache=None):
    """Monte Carlo of the batch-size scan: ``(point rows, run rows)``; cells cached like the grid
    (in ``cache``, default the results cache).

    Point rows: ``batch, sampling, total_samples, t0, n_runs, n_failed, n_collapsed, p_collapse,
    ci_low, ci_high, n_undecided``; run rows: ``batch, sampling, t0, replicate, s, collapsed,
    failed``.
    """
    points, runs = [], []
    for B, sampling in batch_scan_settings(G):
        prob = dataclasses.replace(G.problem, batch=B, sampling=sampling)
        cfg = dataclasses.replace(G, problem=prob, log10_beta_r2=(G.bscan_log10,),
                                  t0s=tuple(G.bscan_t0s), n_seeds=G.bscan_seeds)
        res = run_grid("gmm", cfg, workers=workers, progress=progress, cache=cache)
        und = undecided_counts(res.runs, [grid_beta(G.bscan_log10, G.problem.R**2)],
                               sorted(G.bscan_t0s))[0]
        total = B if sampling == "categorical" else 2 * B
        for r in res.summary:
            j = sorted(G.bscan_t0s).index(r["t0"])
            points.append({"batch": B, "sampling": sampling, "total_samples": total,
                           "t0": r["t0"], "n_runs": r["n_runs"], "n_failed": r["n_failed"],
                           "n_collapsed": r["n_collapsed"], "p_collapse": r["p_collapse"],
                           "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                           "n_undecided": int(und[j])})
        for r in res.runs:
            runs.append({"batch": B, "sampling": sampling, "t0": r["t0"],
                         "replicate": r["replicate"], "s": r["s"], "collapsed": r["collapsed"],
                         "failed": r["failed"]})
    return points, runs


def write_batch_scan(G: GMMGridConfig, folder, workers: int = 1, command: str = "",
                     progress: bool | None = None):
    """Run the scan from scratch (in an empty temporary cache, so that every run is computed by
    this code and the recorded runtime is the computation's) and archive it (per-point and
    per-run CSVs, provenance) in ``folder``."""
    import tempfile

    from ..archive import current_commit, write_archive

    commit = current_commit()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_bscan_") as fresh:
        points, runs = run_batch_scan(G, workers=workers, progress=progress, cache=fresh)
    return write_archive(folder, {"bscan_points.csv": points, "bscan_runs.csv": runs},
                         batch_scan_config(G), time.perf_counter() - t, command, commit)


def load_batch_scan(G: GMMGridConfig, workers: int = 1):
    """The scan's point rows for ``G``: from the archive ``data/BSCAN_ARCHIVE`` when its
    configuration is ``G``'s, else computed (cached). Returns ``(rows, provenance or None)``;
    numeric fields as numbers."""
    from ..archive import data_dir, json_roundtrip, read_archive

    got = read_archive(data_dir(BSCAN_ARCHIVE))
    if got is not None and got[1]["config"] == json_roundtrip(batch_scan_config(G)):
        rows = []
        for r in got[0]["bscan_points.csv"]:
            rows.append({k: (v if k == "sampling" else float(v)) for k, v in r.items()})
        for r in rows:
            for k in ("batch", "total_samples", "n_runs", "n_failed", "n_collapsed",
                      "n_undecided"):
                r[k] = int(r[k])
        return rows, got[1]
    return run_batch_scan(G, workers=workers)[0], None


def batch_scan_theory(G: GMMGridConfig, rows: list[dict], seed: int = 1) -> list[dict]:
    """Add the finite-batch theory (at each point's batch and protocol, with its standard error)
    and the ODE-propagated probability (B -> infinity) to the scan's point rows."""
    p = G.problem
    b_i = grid_beta(G.bscan_log10, p.R**2)
    t0s = np.array(sorted(G.bscan_t0s))
    kw = dict(d=p.d, R=p.R, w_star=p.w_star, lr=p.lr, key=jax.random.key(seed),
              n_extra=G.n_iter_extra)
    ode = C.ode_collapse_probability(np.full(t0s.shape, b_i), t0s, n_samples=G.ode_samples,
                                     with_variance=True, **kw)
    out = []
    cache = {}
    for r in rows:
        key = (r["batch"], r["sampling"])
        if key not in cache:
            cache[key] = C.stochastic_collapse_probability(
                np.full(t0s.shape, b_i), t0s, batch=r["batch"], sampling=r["sampling"],
                n_samples=G.stochastic_samples, settled_s=SETTLED_S, **kw)
        st = cache[key]
        j = int(np.searchsorted(t0s, r["t0"]))
        out.append({**r, "finite-batch theory": float(st.p[j]), "theory_se": float(st.se[j]),
                    "ODE-propagated": float(ode.p[j])})
    return out


def batch_scan_z(rows: list[dict], sampling: str):
    """``(z of the finite-batch theory at every point, z of the ODE-propagated probability at
    the points of the main protocol)``: |Monte Carlo - theory| over the combined standard error
    (:func:`annealvi_lib.figures.collapse_plots.z_scores`; the finite-batch theory's own sampling error
    included)."""
    def counts(rs):
        return (np.array([r["n_collapsed"] for r in rs], float),
                np.array([r["n_runs"] - r["n_failed"] for r in rs], float))

    k, n = counts(rows)
    z_st = z_scores(k, n, [r["finite-batch theory"] for r in rows],
                    [r["theory_se"] for r in rows])
    main = [r for r in rows if r["sampling"] == sampling]
    km, nm = counts(main)
    z_ode = z_scores(km, nm, [r["ODE-propagated"] for r in main])
    return [float(z) for z in z_st], [float(z) for z in z_ode]


def protocol_differences(rows: list[dict], total: int) -> list[tuple]:
    """Categorical minus stratified collapse probability at ``total`` samples per step, per t0:
    ``(t0, dp, low, high)`` with a normal 95% interval (independent runs)."""
    out = []
    for t0 in sorted({r["t0"] for r in rows}):
        pick = {r["sampling"]: r for r in rows if r["t0"] == t0 and r["total_samples"] == total}
        if {"stratified", "categorical"} <= set(pick):
            a, b = pick["stratified"], pick["categorical"]
            na, nb = a["n_runs"] - a["n_failed"], b["n_runs"] - b["n_failed"]
            se = math.sqrt(a["p_collapse"] * (1 - a["p_collapse"]) / na
                           + b["p_collapse"] * (1 - b["p_collapse"]) / nb)
            dp = b["p_collapse"] - a["p_collapse"]
            out.append((t0, dp, dp - 1.96 * se, dp + 1.96 * se))
    return out


def plot_batch_scan(rows: list[dict], R: float, log10_beta_r2: float):
    """Collapse probability against the total number of samples per step on one row: Monte
    Carlo (95% Wilson bars; open markers: the other sampling protocol), the finite-batch theory
    (solid) and the ODE-propagated probability (dashed, B -> infinity), one colour per t0."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.6, 3.8))
    main = rows[0]["sampling"]
    for t0 in sorted({r["t0"] for r in rows}):
        grp = sorted((r for r in rows if r["t0"] == t0 and r["sampling"] == main),
                     key=lambda r: r["total_samples"])
        n = np.array([r["total_samples"] for r in grp], float)
        pm = np.array([r["p_collapse"] for r in grp])
        lo = np.array([r["ci_low"] for r in grp])
        hi = np.array([r["ci_high"] for r in grp])
        line = ax.errorbar(n, pm, yerr=[pm - lo, hi - pm], fmt="o", capsize=3,
                           label=f"$t_0={t0:g}$")
        c = line[0].get_color()
        ax.plot(n, [r["finite-batch theory"] for r in grp], "-", color=c, lw=1.4)
        ax.axhline(grp[0]["ODE-propagated"], ls="--", lw=1.2, color=c)
        for r in rows:
            if r["t0"] == t0 and r["sampling"] != main:
                ax.errorbar([r["total_samples"] * 1.08], [r["p_collapse"]],
                            yerr=[[r["p_collapse"] - r["ci_low"]], [r["ci_high"] - r["p_collapse"]]],
                            fmt="s", mfc="white", color=c, capsize=3)
    other = "categorical" if main == "stratified" else "stratified"
    ax.plot([], [], "k-", lw=1.4, label="finite-batch theory")
    ax.plot([], [], "k--", lw=1.2, label="ODE-propagated ($B\\to\\infty$)")
    ax.plot([], [], "ks", mfc="white", label=f"{other} sampling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"samples per step in total ({main}; $B$ = half of it per component)"
                  if main == "stratified" else "samples per step in total (categorical)")
    ax.set_ylabel(r"$P_{\rm collapse}$")
    ax.set_title(f"$\\log_{{10}}\\beta_iR^2={log10_beta_r2:g}$")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


@register("ch3_bscan", chapter=3,
          description="batch-size scan on the hottest row: Monte Carlo vs finite-batch theory")
def fig_batch_scan(preset: Preset):
    G = preset.gmm_grid
    rows, _ = load_batch_scan(G, workers=default_workers(preset.name))
    return plot_batch_scan(batch_scan_theory(G, rows), G.problem.R, G.bscan_log10)


#: States (log10 beta R^2, m1, m2, s, v beta) at which the chapter checks the noise model.
NOISE_CHECK_STATES = ((-3.0, 0.05, -0.03, -0.95, 1.0), (-1.0, 0.1, -0.1, -0.9, 1.0),
                      (-0.5, 0.2, -0.1, -0.8, 1.0), (-1.0, 0.1, -0.1, -0.9, 3.0))


def noise_moment_rows(G: GMMGridConfig, n_draws: int = 2000, seed: int = 5,
                      states=NOISE_CHECK_STATES) -> list[dict]:
    """The finite-batch model's noise moments against the reduced sampler's empirical ones.

    At each state, ``n_draws`` independent gradient evaluations of the reduced sampler (batch and
    protocol of ``G.problem``) give the empirical per-direction variance of: the gradient of mean
    1 along mu* (in-span; the model includes the target-pull correction); the *relative* mode
    ``g1 - g2`` along mu* (what moves ``Delta``); mean 1 along the second span axis (in-span,
    responsibilities' fluctuation not modelled); and, orthogonal to the span, the mean Gram
    matrix over D (diagonal and cross term) -- the sampler's own ``E[C C^T]``, so these rows check
    the moment integrals ``S``, not the Wishart law. The model's values come from
    :func:`annealvi_lib.theory.collapse.noise_covariance` and
    :func:`annealvi_lib.theory.collapse.target_pull_correction`. Returns rows with the relative
    difference and its sampling standard error (``sqrt(2/n)`` for an empirical variance; the
    standard error of the mean for the Gram entries).
    """
    from ..models import reduced as Rd
    from ..models.student import Hyper

    p = G.problem
    hyper = Hyper(lr=p.lr, batch=p.batch, sampling=p.sampling)
    n_bc = p.batch if p.sampling == "stratified" else 0.5 * p.batch
    D = p.d - 3
    se_var = math.sqrt(2.0 / n_draws)
    rows = []
    for k, m1, m2, s, vb in states:
        beta = grid_beta(k, p.R**2)
        v = vb / beta
        g, S_draws = Rd.gradient_noise_draws(jax.random.key(seed), (m1, m2), s, (v, v), beta,
                                             p.R, p.w_star, p.d, hyper, n_draws)
        gc = g - g.mean(0)
        rel = gc[:, 0, 0] - gc[:, 1, 0]
        q11, q22, q12 = (float(x) for x in C.noise_covariance(s, v, beta, R=p.R,
                                                              batch_per_component=n_bc))
        d11, d22, d12 = (float(x) for x in C.target_pull_correction(
            m1, m2, s, v, beta, R=p.R, w_star=p.w_star, batch_per_component=n_bc))

        def gram(i, j):
            x = S_draws[:, i, j] / D
            return float(x.mean()), float(x.std() / abs(x.mean()) / math.sqrt(n_draws))

        g00, se00 = gram(0, 0)
        g01, se01 = gram(0, 1)
        checks = (("mean 1, along $\\mu^*$", q11 + d11, float(np.mean(gc[:, 0, 0] ** 2)), se_var),
                  ("$g_1-g_2$, along $\\mu^*$", q11 + q22 - 2 * q12 + d11 + d22 - 2 * d12,
                   float(np.mean(rel ** 2)), se_var),
                  ("mean 1, second span axis", q11, float(np.mean(gc[:, 0, 1] ** 2)), se_var),
                  ("off the span, $Q_{11}$", q11, g00, se00),
                  ("off the span, $Q_{12}$", q12, g01, se01))
        for name, model, emp, err in checks:
            rows.append({"log10(beta R^2)": k, "state": f"({m1:g}, {m2:g}, {s:g})",
                         "v beta": vb, "quantity": name, "model": model, "sampler": emp,
                         "rel. diff": emp / model - 1.0, "rel. SE": err})
    return rows


#: Cells (log10 beta_i R^2, t0) of the noise ablation: the hottest row fast and slow, and two
#: warmer cells.
ABLATION_CELLS = ((-3.0, 100.0), (-3.0, 400.0), (-2.0, 200.0), (-1.5, 300.0))


def noise_ablation_rows(G: GMMGridConfig, A: dict, T: TheoryGrid, seed: int = 1) -> list[dict]:
    """Which part of the gradient noise matters: the finite-batch theory with only its in-span
    part, only its off-span part, and both, next to the propagated map (no noise) and the Monte
    Carlo, on the :data:`ABLATION_CELLS` that lie on the grid ``A`` (same initial draws)."""
    p = G.problem
    cells = [(grid_beta(k, p.R**2), t0) for k, t0 in ABLATION_CELLS]
    idx = [(int(np.argmin(np.abs(A["beta_is"] - b))), int(np.argmin(np.abs(A["t0s"] - t))))
           for b, t in cells]
    keep = [n for n, (b, t) in enumerate(cells)
            if math.isclose(A["beta_is"][idx[n][0]], b, rel_tol=1e-9) and A["t0s"][idx[n][1]] == t]
    if not keep:
        return []
    b = np.array([cells[n][0] for n in keep])
    t = np.array([cells[n][1] for n in keep])
    kw = dict(d=p.d, R=p.R, w_star=p.w_star, lr=p.lr, key=jax.random.key(seed),
              n_extra=G.n_iter_extra, n_samples=G.stochastic_samples, batch=p.batch,
              sampling=p.sampling)
    parts = {name: C.stochastic_collapse_probability(b, t, in_span=a, perpendicular=q, **kw).p
             for name, a, q in (("in-span noise only", True, False),
                                ("off-span noise only", False, True))}
    rows = []
    for m, n in enumerate(keep):
        i, j = idx[n]
        rows.append({"log10(beta_i R^2)": ABLATION_CELLS[n][0], "t0": ABLATION_CELLS[n][1],
                     "Monte Carlo": float(A["p_collapse"][i, j]),
                     "no noise (ODE-propagated)": float(T.p_ode[i, j]),
                     "in-span noise only": float(parts["in-span noise only"][m]),
                     "off-span noise only": float(parts["off-span noise only"][m]),
                     "both (finite-batch theory)": float(T.p_stoch[i, j])})
    return rows
