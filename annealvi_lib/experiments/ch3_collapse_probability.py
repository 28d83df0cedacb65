"""Chapter 3's computations: the Monte-Carlo grid, the theories on it, the fitted alpha, the
mechanism and stability scans, the sampler validation and its benchmarks (the finite-batch
studies are in :mod:`annealvi_lib.experiments.ch3_finite_batch`, the figures in
:mod:`annealvi_lib.figures.ch3`).

Every function takes the preset's :class:`~annealvi_lib.config.GMMGridConfig`; Monte-Carlo
results come from the cached grid runner, so the notebook and ``python -m annealvi_lib figures``
share them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import numpy as np

from ..theory import collapse as C
from ..theory import propagated as prop
from ..theory import ode as theory
from ..metrics import SETTLED_S, summary_arrays, undecided_counts, z_scores
from ..config import GMMGridConfig, grid_beta
from .grid import run_grid
from ..models.schedules import Schedule

__all__ = ["TheoryGrid", "mc_grid", "theory_grid", "theory_rows",
           "closed_family", "fit_alpha_bootstrap", "mechanism_trajectories", "stability_scan",
           "cell_config", "validation_rows", "vanilla_rows", "branch_scan", "slice_theories",
           "hot_start_curve", "HOT_FRACTION", "RateAgreement", "rate_agreement",
           "benchmark_summary", "sampler_versions"]


def mc_grid(G: GMMGridConfig, workers: int = 1, progress: bool | None = None):
    """Run (or load) the Monte-Carlo grid; returns ``(summary_arrays, seconds)``. The arrays
    also hold ``n_undecided`` (n_beta, n_t0): finished runs whose final ``|s| < SETTLED_S`` (:mod:`annealvi_lib.metrics`),
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
    ode = prop.ode_collapse_probability(BB, TT, key=jax.random.key(seed), n_extra=G.n_iter_extra,
                                     n_samples=G.ode_samples, with_variance=True, **kw)
    ode_s = time.perf_counter() - t
    if not with_stochastic:
        nan = np.full(BB.shape, np.nan)
        return TheoryGrid(BB, TT, p_closed, p_paper, ode.p, ode.se, closed_ms, ode_s, p_corr,
                          nan, nan, nan, 0.0)
    t = time.perf_counter()
    st = prop.stochastic_collapse_probability(BB, TT, batch=batch, sampling=sampling,
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
        ode = prop.ode_collapse_probability(np.array([[1.0]]), np.array([[1.0]]), d=int(dim),
                                         R=p.R, w_star=p.w_star, lr=p.lr,
                                         key=jax.random.key(key_seed),
                                         n_extra=G.vanilla_steps - 1, n_samples=G.ode_samples,
                                         with_variance=True)
        eps = C.collapse_epsilon(p.R, p.w_star)
        p_st = math.nan                    # the model's chi^2 draws need d >= 33
        if dim >= 33:
            p_st = float(prop.stochastic_collapse_probability(
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


# --------------------------------------------------------------------------------------------
# what the figures draw: branch scan, theory slices, hot-start curve and the rate agreement
# --------------------------------------------------------------------------------------------

def branch_scan(G: GMMGridConfig, n: int = 60):
    """``(beta / beta_c, m_b, linear tilt)`` on a log grid of beta / beta_c in [1e-2, 4]."""
    p = G.problem
    ratio = np.logspace(-2, np.log10(4.0), n)
    beta = ratio * C.critical_beta(p.R, p.w_star)
    return (ratio, C.symmetric_branch(beta, R=p.R, w_star=p.w_star),
            C.linear_tilt(beta, R=p.R, w_star=p.w_star))


def slice_theories(T: TheoryGrid) -> dict:
    """The theories drawn on the per-beta_i slices."""
    return {"closed form (derived $\\alpha$)": T.p_closed,
            "closed form ($\\alpha=0.608$)": T.p_closed_paper,
            "ODE-propagated": T.p_ode,
            "finite-batch theory": T.p_stoch}


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
    :func:`annealvi_lib.metrics.z_scores`).

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
