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

from . import collapse as C
from . import theory
from .collapse_plots import (plot_heatmap, plot_mechanism, plot_slices,
                             plot_stability, plot_symmetric_branch, plot_vs_rate, summary_arrays,
                             undecided_counts, z_scores)
from .config import GMMGridConfig, Preset, grid_beta
from .figures import register
from .grid import run_grid
from .schedules import Schedule

__all__ = ["TheoryGrid", "default_workers", "mc_grid", "theory_grid", "fit_alpha",
           "mechanism_trajectories", "stability_scan", "cell_config", "validation_rows",
           "sensitivity_rows", "plot_batch_sensitivity"]


def default_workers(preset_name: str) -> int:
    """Worker processes for grid runs: one per core (max 2) except at the quick preset, where
    spawning costs more than it saves."""
    return 1 if preset_name == "quick" else min(2, os.cpu_count() or 1)


def mc_grid(G: GMMGridConfig, workers: int = 1, progress: bool | None = None):
    """Run (or load) the Monte-Carlo grid; returns ``(summary_arrays, seconds)``. The arrays
    also hold ``n_undecided`` (n_beta, n_t0): finished runs whose final ``|s| < SETTLED_S`` (:mod:`annealvi_lib.collapse_plots`),
    classified by the sign of ``s`` although they have not settled when the run stops."""
    t = time.perf_counter()
    res = run_grid("gmm", G, workers=workers, progress=progress)
    A = summary_arrays(res.summary)
    A["n_undecided"] = undecided_counts(res.runs, A["beta_is"], A["t0s"])
    return A, time.perf_counter() - t


class TheoryGrid(NamedTuple):
    """Both theories on the grid's (beta_i, t0) cells (arrays of shape (n_beta, n_t0))."""

    BB: np.ndarray
    TT: np.ndarray
    p_closed: np.ndarray          # closed form, derived alpha
    p_closed_paper: np.ndarray    # closed form, alpha = 0.608
    p_ode: np.ndarray             # ODE-propagated, with variance lag
    p_ode_se: np.ndarray
    closed_ms: float
    ode_seconds: float


def theory_grid(G: GMMGridConfig, seed: int = 1) -> TheoryGrid:
    """Closed form (derived and paper alpha) and ODE-propagated probabilities on the grid."""
    p = G.problem
    BB, TT = np.meshgrid(np.array(G.beta_is), np.array(G.t0s), indexing="ij")
    kw = dict(d=p.d, R=p.R, w_star=p.w_star, lr=p.lr)
    C.derived_alpha(p.R, p.w_star)                     # compile/memoise outside the timing
    t = time.perf_counter()
    p_closed = C.collapse_probability(BB, TT, **kw)
    closed_ms = 1e3 * (time.perf_counter() - t)
    p_paper = C.collapse_probability(BB, TT, alpha=C.PAPER_ALPHA, **kw)
    t = time.perf_counter()
    ode = C.ode_collapse_probability(BB, TT, key=jax.random.key(seed), n_extra=G.n_iter_extra,
                                     n_samples=G.ode_samples, with_variance=True, **kw)
    return TheoryGrid(BB, TT, p_closed, p_paper, ode.p, ode.se, closed_ms,
                      time.perf_counter() - t)


def fit_alpha_bootstrap(k, n, T: TheoryGrid, G: GMMGridConfig, growth: float = 1.0, mask=None,
                        alphas=np.linspace(0.2, 2.0, 1801), n_boot: int = 400, seed: int = 0):
    """Maximum-likelihood alpha of the closed form (with ``growth``, see
    :func:`annealvi_lib.collapse.collapse_probability`) given binomial counts ``k`` of ``n`` per
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
    q = np.stack([C.collapse_probability(T.BB, T.TT, d=p.d, R=p.R, w_star=p.w_star, lr=p.lr,
                                         alpha=a, growth=growth)[sel] for a in alphas])
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


def fit_alpha(A: dict, T: TheoryGrid, G: GMMGridConfig, alphas=np.linspace(0.3, 1.5, 241),
              mask=None):
    """Maximum-likelihood alpha of the closed form given the grid's binomial counts.

    Args:
      mask: optional boolean (n_beta, n_t0) selecting the cells used in the fit.
    Returns ``(alpha_hat, low, high)`` with the likelihood-ratio 95% interval
    (``Delta NLL < 1.92``) on the scanned ``alphas``.
    """
    p = G.problem
    sel = np.ones(A["n_runs"].shape, bool) if mask is None else np.asarray(mask, bool)
    if not sel.any():
        return math.nan, math.nan, math.nan
    n_ok = np.where(sel, A["n_runs"] - A["n_failed"], 0)
    k = np.where(sel, A["n_collapsed"], 0)

    def nll(alpha):
        q = C.collapse_probability(T.BB, T.TT, d=p.d, R=p.R, w_star=p.w_star, lr=p.lr,
                                   alpha=alpha)
        q = np.clip(q, 1e-9, 1 - 1e-9)
        return -np.sum(k * np.log(q) + (n_ok - k) * np.log1p(-q))

    nlls = np.array([nll(a) for a in alphas])
    inside = alphas[nlls - nlls.min() < 1.92]
    return float(alphas[np.argmin(nlls)]), float(inside.min()), float(inside.max())


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
            rows.append({"log10(beta_i R^2)": k, "t0": t0, "B": B, "steps after t0": extra,
                         "p_collapse": r["p_collapse"], "ci_low": r["ci_low"],
                         "ci_high": r["ci_high"], "closed form": p_cf, "ODE-propagated": p_ode})
    return rows


def vanilla_rows(G: GMMGridConfig, workers: int = 1, key_seed: int = 3) -> list[dict]:
    """The no-annealing row: beta = 1 throughout (variance 1 at the start) for each dimension in
    ``G.vanilla_dims``, ``G.vanilla_seeds`` runs of ``G.vanilla_steps`` steps (reduced sampler,
    cached), against ``Phi^2 + Phi^2`` (:func:`annealvi_lib.collapse.vanilla_probability`), the
    closed form's ``erf(sqrt(d) eps)`` and the ODE-propagated probability at beta = 1."""
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
        rows.append({"d": int(dim), "runs": r["n_runs"] - r["n_failed"],
                     "p_collapse": r["p_collapse"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "independent means": C.vanilla_probability(d=int(dim), R=p.R, w_star=p.w_star),
                     "closed form": float(math.erf(math.sqrt(dim) * eps)),
                     "ODE-propagated": float(ode.p.ravel()[0]),
                     "undecided": int(undecided_counts(res.runs, [r["beta_i"]], [r["t0"]])[0, 0])})
    return rows


def plot_batch_sensitivity(rows: list[dict], n_iter_extra: int):
    """Collapse probability against B per cell (Wilson bars), with the ODE-propagated probability
    (dashed: the B -> infinity limit of the simulation) and the closed form (dotted)."""
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
        if "ODE-propagated" in grp[0]:
            ax.axhline(grp[0]["ODE-propagated"], ls="--", lw=1.2, color=c)
        ax.axhline(grp[0]["closed form"], ls=":", lw=1.2, color=c)
    ax.plot([], [], "k--", lw=1.2, label="ODE-propagated ($B\\to\\infty$)")
    ax.plot([], [], "k:", lw=1.2, label="closed form")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size $B$ (samples per component)")
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
            "ODE-propagated": T.p_ode}


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
    :func:`annealvi_lib.collapse_plots.z_scores`).

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
    from .schedules import annealing_rate

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
    return plot_batch_sensitivity(sensitivity_rows(G, default_workers(preset.name)), G.n_iter_extra)


def benchmark_summary() -> dict | None:
    """Sampler throughput from ``benchmarks/bench_gmm.py``'s JSON: ``results/`` (fresh, this
    machine) if present, else the reference measurements in ``benchmarks/reference/``.

    Returns ``None`` if neither exists, else a dict with seed-steps per second of the reduced
    sampler (grid entry point), the exact sampler (one seed per scan and 8 vmapped seeds, B = 1024
    and 8192) and the plain per-seed loop, plus the source file.
    """
    from .paths import load_benchmark

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

    out = {"source": source,
           "reduced_1024": rate("reduced_betas", "vmap", 1024),
           "reduced_8192": rate("reduced", "vmap", 8192),
           "exact_1024_s1": rate("exact", "vmap", 1024, 1),
           "exact_1024_s8": rate("exact", "vmap", 1024, 8),
           "exact_8192_s1": rate("exact", "vmap", 8192, 1),
           "loop_1024": rate("exact", "python_loop", 1024),
           "loop_8192": rate("exact", "python_loop", 8192)}
    return out
