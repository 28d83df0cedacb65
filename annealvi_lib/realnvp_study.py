"""Chapter 4's computations: the demo training run, the RealNVP collapse grid, the same grid
with the GMM student, the normalisation comparison and the verdicts -- and the chapter's
registered figures.

Every function takes the preset's :class:`~annealvi_lib.config.RealNVPGridConfig`. Monte-Carlo
results come from the cached grid runner (:func:`annealvi_lib.grid.run_grid`, one file per
cell), so the notebook and ``python -m annealvi_lib figures ch4_*`` share them. The demo run is
recomputed each time (about 10 s at the ``book`` preset, two jit compilations included).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import numpy as np

from . import realnvp as rn
from .config import GMMGridConfig, Preset, Problem, RealNVPGridConfig, grid_beta
from .figures import register
from .grid import run_grid
from .metrics import COLLAPSE_STD, run_summary, target_projection_std, wilson_interval
from .schedules import Schedule, annealing_rate

__all__ = ["DEMO_ARMS", "DemoSetting", "demo_setting", "demo_runs", "demo_summary", "FlowGrid",
           "flow_grid", "gmm_comparison_config", "gmm_comparison", "Highlights", "highlights",
           "verdicts", "NORM_CHOICES", "norm_cells", "norm_comparison",
           "norms_overlap", "norm_verdict", "plot_demo_run", "plot_flow_heatmap", "plot_rate",
           "rate_verdict",
           "plot_flow_vs_gmm", "gmm_comparison_cells"]

#: the two arms of the demo run, in plotting order
DEMO_ARMS = ("annealed", "no annealing")
#: conditioner normalisations compared at the end of the chapter (realnvp.NORMS)
NORM_CHOICES = ("beta", "batch")


# --------------------------------------------------------------------------------------------
# one annealed run
# --------------------------------------------------------------------------------------------

class DemoSetting(NamedTuple):
    """Schedule of the demo run: a middle beta_i of the grid, the longest t0."""

    beta_i: float
    t0: float
    n_iter: int
    record_every: int


def demo_setting(cfg: RealNVPGridConfig) -> DemoSetting:
    """The demo's ``beta_i`` (the grid's middle annealed row, or the first one for a grid of at
    most two rows), ``t0 = max(t0s)``, ``n_iter = t0 + n_iter_extra`` and a record block giving
    about 100 trajectory points."""
    b = cfg.beta_is
    beta_i = b[len(b) // 2 - 1] if len(b) > 2 else b[0]
    t0 = max(cfg.t0s)
    n_iter = int(t0) + cfg.n_iter_extra
    return DemoSetting(float(beta_i), float(t0), n_iter, max(1, n_iter // 100))


def demo_runs(cfg: RealNVPGridConfig) -> dict:
    """Train one flow with annealing and one at ``beta = 1``, from the same key
    (``cfg.seed + 1``) on the grid's target.

    Returns ``{arm: (params, Trajectory, FinalStats)}`` for the arms :data:`DEMO_ARMS`, without
    a seed axis (:func:`annealvi_lib.realnvp.train`).
    """
    s = demo_setting(cfg)
    spec = rn.spec_from_config(cfg)
    tgt = rn.grid_target(cfg, cfg.seed)
    key = jax.random.key(cfg.seed + 1)
    scheds = {"annealed": Schedule("exp", s.beta_i, s.t0), "no annealing": Schedule("constant")}
    return {name: rn.train(key, spec, scheds[name], s.n_iter, target=tgt, batch=cfg.batch,
                           lr=cfg.lr, record_every=s.record_every, n_eval=cfg.n_eval)
            for name in DEMO_ARMS}


def demo_summary(demo: dict) -> dict:
    """:func:`annealvi_lib.metrics.run_summary` of each demo arm's final samples (one run each)."""
    return {k: run_summary(v[2].proj[None], v[2].log_w[None]) for k, v in demo.items()}


# --------------------------------------------------------------------------------------------
# the grids
# --------------------------------------------------------------------------------------------

class FlowGrid(NamedTuple):
    """The RealNVP grid as arrays: rows ``B`` (beta_i), columns ``T`` (t0).

    ``pc``, ``lo``, ``hi``: collapse probability and Wilson 95% bounds, shape (len(B), len(T));
    ``summ``: the grid's summary rows keyed by ``(beta_i, t0)``; ``n_failed``: runs flagged
    failed over the grid; ``seconds``: wall time of the (cached) grid call.
    """

    B: np.ndarray
    T: np.ndarray
    pc: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    summ: dict
    n_failed: int
    seconds: float


def flow_grid(cfg: RealNVPGridConfig, progress: bool | None = None,
              workers: int = 1) -> FlowGrid:
    """Run (or load from the on-disk cache) the RealNVP grid of ``cfg``."""
    t = time.perf_counter()
    grid = run_grid("realnvp", cfg, progress=progress, workers=workers)
    seconds = time.perf_counter() - t
    B = np.array(cfg.beta_is)
    T = np.array(cfg.t0s)
    summ = {(r["beta_i"], r["t0"]): r for r in grid.summary}
    pc, lo, hi = (np.array([[summ[(b, t)][f] for t in T] for b in B])
                  for f in ("p_collapse", "ci_low", "ci_high"))
    n_failed = int(sum(r["n_failed"] for r in grid.summary))
    return FlowGrid(B, T, pc, lo, hi, summ, n_failed, seconds)


def gmm_comparison_config(cfg: RealNVPGridConfig) -> GMMGridConfig:
    """The GMM-student grid on the same (beta_i, t0) cells, target, batch, seeds and run length
    as the RealNVP grid (JKO step from :class:`~annealvi_lib.config.Problem`, exact sampler)."""
    return GMMGridConfig(problem=Problem(d=cfg.d, R=cfg.R, w_star=cfg.w_star, batch=cfg.batch),
                         log10_beta_r2=tuple(float(np.log10(b * cfg.R**2)) for b in cfg.beta_is),
                         t0s=cfg.t0s, n_seeds=cfg.n_seeds, n_iter_extra=cfg.n_iter_extra,
                         sampler="exact", seed=cfg.seed)


def gmm_comparison_cells(cfg: RealNVPGridConfig, progress: bool | None = None):
    """The GMM student on the RealNVP grid (cached): ``(p, lo, hi, seconds)``, the collapse
    probability and its Wilson 95% interval, each shaped ``(len(B), len(T))`` with rows and
    columns as in :class:`FlowGrid`."""
    t = time.perf_counter()
    ggrid = run_grid("gmm", gmm_comparison_config(cfg), progress=progress)
    # beta_i = 10^k / R^2 with k = log10(beta_i R^2) round-trips only to ~1e-15
    gsum = {(round(r["beta_i"], 10), r["t0"]): r for r in ggrid.summary}
    p, lo, hi = (np.array([[gsum[(round(float(b), 10), float(t))][key] for t in cfg.t0s]
                           for b in cfg.beta_is]) for key in ("p_collapse", "ci_low", "ci_high"))
    return p, lo, hi, time.perf_counter() - t


def gmm_comparison(cfg: RealNVPGridConfig, progress: bool | None = None):
    """Collapse probability of the GMM student on the RealNVP grid (cached):
    ``(pg (len(B), len(T)), seconds)``, rows and columns as in :class:`FlowGrid`."""
    p, _, _, seconds = gmm_comparison_cells(cfg, progress)
    return p, seconds


# --------------------------------------------------------------------------------------------
# key cells and verdicts
# --------------------------------------------------------------------------------------------

class Highlights(NamedTuple):
    """Cells the chapter discusses (indices into ``FlowGrid.B`` / ``FlowGrid.T``).

    ``ann``: annealed rows (beta_i < 1); ``p_vanilla``: mean P over the beta_i = 1 row with the
    Wilson interval ``(lo_van, hi_van)`` of its pooled counts; ``(i_best, j_best)``: the best
    annealed cell; ``i_hot``: the hottest row; ``jm``: the middle t0 column; ``i_optm``: the best
    annealed row at ``jm``; ``i_opt0``: the best annealed row at the shortest t0.
    """

    ann: np.ndarray
    p_vanilla: float
    lo_van: float
    hi_van: float
    i_best: int
    j_best: int
    i_hot: int
    jm: int
    i_optm: int
    i_opt0: int


def _argmin_annealed(p: np.ndarray, ann: np.ndarray) -> int:
    """Row index of the smallest probability among annealed rows (NaN-tolerant)."""
    return int(np.nanargmin(np.where(ann, p, np.inf)))


def highlights(fg: FlowGrid) -> Highlights:
    """The cells quoted in the chapter's prose (see :class:`Highlights`)."""
    B, T, pc = fg.B, fg.T, fg.pc
    ann = B < 1
    p_vanilla = float(np.nanmean(pc[~ann]))
    if (~ann).any():
        k_van = int(sum(fg.summ[(1.0, t)]["n_collapsed"] for t in T))
        n_van = int(sum(fg.summ[(1.0, t)]["n_runs"] - fg.summ[(1.0, t)]["n_failed"] for t in T))
    else:
        k_van = n_van = 0
    lo_van, hi_van = wilson_interval(k_van, max(n_van, 1)) if n_van else (np.nan, np.nan)
    i_best, j_best = np.unravel_index(np.nanargmin(np.where(ann[:, None], pc, np.inf)), pc.shape)
    jm = len(T) // 2
    return Highlights(ann=ann, p_vanilla=p_vanilla, lo_van=float(lo_van), hi_van=float(hi_van),
                      i_best=int(i_best), j_best=int(j_best), i_hot=int(np.argmin(B)), jm=jm,
                      i_optm=_argmin_annealed(pc[:, jm], ann),
                      i_opt0=_argmin_annealed(pc[:, 0], ann))


def _fmt_drops(B, mat, rows) -> str:
    """``beta_i = b: P(shortest t0) -> P(longest t0)`` for each row index in ``rows``."""
    return "; ".join(f"$\\beta_i$ = {float(B[i]):.3g}: {float(mat[i, 0]):.2f} → "
                     f"{float(mat[i, -1]):.2f}" for i in rows)


def verdicts(fg: FlowGrid, pg: np.ndarray, hl: Highlights, beta_c: float,
             problem: tuple[int, float, float] | None = None) -> dict[str, str]:
    """The chapter's comparisons of the flow with the GMM student, as Markdown sentences.

    Args:
      fg: the RealNVP grid; pg: the GMM grid on the same cells (shape of ``fg.pc``);
      hl: :func:`highlights` of ``fg``; beta_c: the GMM's critical beta
        (:func:`annealvi_lib.collapse.critical_beta`).
      problem: ``(d, R, w_star)`` of the target, for the no-annealing formula of chapter 3.
    Returns:
      ``{"v_vanilla", "v_rate_below", "v_rate_above", "v_above_compare", "v_hot"}`` -> text:
      collapse without annealing; shortest-to-longest-t0 change for annealed rows hotter / colder
      than ``beta_c`` and the mean change above it, flow against GMM; the
      hottest against the best start at the middle t0 (significance from Wilson intervals).
    """
    B, pc, lo, hi, ann = fg.B, fg.pc, fg.lo, fg.hi, hl.ann
    i_hot, jm, i_optm = hl.i_hot, hl.jm, hl.i_optm
    out = {}
    # 1. no annealing
    pg_van = float(np.nanmean(pg[~ann])) if (~ann).any() else float("nan")
    from .collapse import vanilla_probability

    d_dim = int(problem[0]) if problem else 0
    p_ind = vanilla_probability(d=problem[0], R=problem[1], w_star=problem[2]) if problem else float("nan")
    out["v_vanilla"] = (
        f"the flow collapses with probability {hl.p_vanilla:.2f} and the GMM student with "
        f"{pg_van:.2f}. " + (
            "The flow is *more* collapse-prone than the GMM at this dimension. Without "
            "annealing each GMM mean goes to the mode on its side, independently (chapter 3: "
            f"$\\Phi(\\sqrt d\\,\\varepsilon)^2+\\Phi(-\\sqrt d\\,\\varepsilon)^2$ = {p_ind:.2f} at "
            f"$d$ = {d_dim}), while the flow starts from $\\mathcal N(0, I)$, a single bump that "
            "the heavy mode pulls over."
            if hl.p_vanilla > pg_van + 0.1 else
            "Both are collapse-prone, as in the paper."))
    # 2. slower annealing helps, below and above beta_c
    rows_below = [i for i in range(len(B)) if ann[i] and B[i] < beta_c]
    rows_above = [i for i in range(len(B)) if ann[i] and B[i] >= beta_c]
    for name, rows, side in (("v_rate_below", rows_below, "hotter than"),
                             ("v_rate_above", rows_above, "colder than")):
        out[name] = (_fmt_drops(B, pc, rows) + " (flow), " + _fmt_drops(B, pg, rows) + " (GMM)"
                     if rows else f"no annealed row {side} $\\beta_c$ at this preset")
    if rows_above:
        df = float(np.mean([pc[i, 0] - pc[i, -1] for i in rows_above]))
        dg = float(np.mean([pg[i, 0] - pg[i, -1] for i in rows_above]))
        out["v_above_compare"] = (
            f"averaged over the rows colder than $\\beta_c$, the flow's collapse probability falls "
            f"by {df:.2f} from the shortest to the longest $t_0$ and the GMM student's by "
            f"{dg:.2f}" + ("; the flow gains much more from a slow schedule there" if df > dg + 0.3
                           else "; with these interval widths the two gains are not resolved"
                           if abs(df - dg) <= 0.3 else "; the GMM gains more there"))
    else:
        out["v_above_compare"] = "no annealed row is colder than $\\beta_c$ at this preset"
    # 3. hot starts at a fixed budget (middle t0)
    i_opt_g = _argmin_annealed(pg[:, jm], ann)
    out["v_hot"] = (
        f"the flow collapses with probability {pc[i_hot, jm]:.2f} "
        f"[{lo[i_hot, jm]:.2f}, {hi[i_hot, jm]:.2f}] from the hottest start "
        f"$\\beta_i$ = {B[i_hot]:.3g} against {pc[i_optm, jm]:.2f} "
        f"[{lo[i_optm, jm]:.2f}, {hi[i_optm, jm]:.2f}] from its best start "
        f"$\\beta_i$ = {B[i_optm]:.3g}; " + (
            f"the GMM student {pg[i_hot, jm]:.2f}, its best start being the hottest. "
            if i_opt_g == i_hot else
            f"the GMM student {pg[i_hot, jm]:.2f} from the hottest and {pg[i_opt_g, jm]:.2f} from "
            f"its best, $\\beta_i$ = {B[i_opt_g]:.3g}. ") + (
            "For the flow a very hot start *hurts* at this budget (the intervals do not "
            "overlap)" if lo[i_hot, jm] > hi[i_optm, jm] else
            "The intervals of the flow's hottest and best starts overlap: no significant "
            "cost of a hot start at this budget") + ".")
    return out


# --------------------------------------------------------------------------------------------
# does the conditioner normalisation matter?
# --------------------------------------------------------------------------------------------

def norm_cells(fg: FlowGrid, hl: Highlights) -> list[tuple[float, float]]:
    """The two cells rerun with each normalisation: no annealing at the shortest t0, and the
    hottest start at the middle t0."""
    return [(1.0, float(fg.T[0])), (float(fg.B[hl.i_hot]), float(fg.T[hl.jm]))]


def _one_cell_config(cfg: RealNVPGridConfig, beta_i: float, t0: float,
                     **changes) -> RealNVPGridConfig:
    """A copy of ``cfg`` whose grid is the single cell ``(beta_i, t0)``; ``beta_i`` must be 1
    or one of the grid's rows (so that it is reproduced bit for bit)."""
    if beta_i == 1.0:
        rows = dict(log10_beta_9=(), include_beta_one=True)
    else:
        ks = [k for k in cfg.log10_beta_9 if grid_beta(k, 9.0) == beta_i]
        if not ks:
            raise ValueError(f"beta_i must be 1 or a row of the grid {cfg.beta_is}, got {beta_i!r}")
        rows = dict(log10_beta_9=(ks[0],), include_beta_one=False)
    return dataclasses.replace(cfg, t0s=(float(t0),), **rows, **changes)


def norm_comparison(cfg: RealNVPGridConfig, cells: list[tuple[float, float]],
                    n_seeds: int | None = None, progress: bool | None = None) -> list[dict]:
    """Collapse rates of ``cells`` for each normalisation in :data:`NORM_CHOICES` (cached).

    Each (cell, norm) is a one-cell grid (:func:`annealvi_lib.grid.run_grid`) with replicates
    ``0 .. n_seeds - 1``, i.e. the first keys of the main grid's cell.

    Args:
      cfg: the RealNVP grid configuration.
      cells: ``(beta_i, t0)`` pairs, each beta_i 1 or a row of the grid.
      n_seeds: runs per cell (>= 2; default ``max(2, cfg.n_seeds // 2)``).
    Returns:
      one dict per cell: ``beta_i``, ``t0`` and, per norm, ``{"p", "lo", "hi", "n"}``
      (collapse probability over non-failed runs, Wilson 95% bounds, non-failed runs).
    """
    n_seeds = max(2, cfg.n_seeds // 2) if n_seeds is None else int(n_seeds)
    if n_seeds < 2:
        raise ValueError(f"n_seeds must be >= 2, got {n_seeds}")
    rows = []
    for b, t0 in cells:
        row = {"beta_i": float(b), "t0": float(t0)}
        for norm in NORM_CHOICES:
            c = _one_cell_config(cfg, b, t0, norm=norm, n_seeds=n_seeds)
            s = run_grid("realnvp", c, progress=progress).summary[0]
            row[norm] = {"p": float(s["p_collapse"]), "lo": float(s["ci_low"]),
                         "hi": float(s["ci_high"]), "n": int(s["n_runs"] - s["n_failed"])}
        rows.append(row)
    return rows


def norms_overlap(rows: list[dict]) -> bool:
    """True when the Wilson intervals of the two normalisations overlap in every cell."""
    a, b = NORM_CHOICES
    return all(r[a]["lo"] <= r[b]["hi"] and r[b]["lo"] <= r[a]["hi"] for r in rows)


def norm_verdict(rows: list[dict]) -> str:
    """One Markdown sentence on whether the normalisation changes the conclusions."""
    if norms_overlap(rows):
        n = min(min(r[k]["n"] for k in NORM_CHOICES) for r in rows)
        return ("The Wilson intervals of the two normalisations overlap in every cell, so the "
                f"comparison is inconclusive: with {n} runs per cell only large differences "
                "(about 0.35 or more) could be detected, and overlapping intervals are not "
                "evidence that the normalisation has no effect.")
    return ("The intervals do **not** overlap in at least one cell: the normalisation matters "
            "there (see the numbers above).")


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------

def plot_demo_run(demo: dict, cfg: RealNVPGridConfig):
    """Four panels of the demo runs: final marginal along mu* against the target, KL to the
    tempered target, std/mean of the projection, and the schedule."""
    import matplotlib.pyplot as plt

    std_target = target_projection_std(cfg.R, cfg.w_star)
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    yy = np.linspace(-8, 8, 801)
    p1 = (cfg.w_star * np.exp(-0.5 * (yy - cfg.R) ** 2)
          + (1 - cfg.w_star) * np.exp(-0.5 * (yy + cfg.R) ** 2)) / math.sqrt(2 * math.pi)
    a = ax[0, 0]
    a.plot(yy, p1, "k", lw=2, label=r"target $\pi$")
    for i, (k, v) in enumerate(demo.items()):
        a.hist(np.asarray(v[2].proj), bins=80, range=(-8, 8), density=True, alpha=0.5,
               color=f"C{i}", label=f"flow, {k}")
    a.set_xlabel(r"$y = \langle \mu^*, x\rangle$")
    a.set_ylabel("density")
    a.set_title("final marginal along $\\mu^*$")
    a.legend()
    for i, (k, v) in enumerate(demo.items()):
        tr = v[1]
        ax[0, 1].plot(tr.step, tr.kl, color=f"C{i}", label=f"KL$(q\\|\\pi_\\beta)$, {k}")
        ax[1, 0].plot(tr.step, tr.proj_std, color=f"C{i}", label=f"std, {k}")
        ax[1, 0].plot(tr.step, tr.proj_mean, "--", color=f"C{i}", label=f"mean, {k}")
        ax[1, 1].plot(tr.step, tr.beta, color=f"C{i}", label=k)
    ax[0, 1].set_yscale("log")
    ax[0, 1].set_xlabel("step $t$")
    ax[0, 1].set_ylabel("KL (nats)")
    ax[0, 1].legend()
    # reference levels in the legend (labels written on the lines would sit on the data)
    for v, lab, sty in ((std_target, f"target std ({std_target:.2f})", dict(color="k", ls=":")),
                        (COLLAPSE_STD, f"collapse threshold ({COLLAPSE_STD:g})",
                         dict(color="0.45", ls="-.")),
                        (1.0, "one-mode std (1)", dict(color="0.6", ls=(0, (1, 3))))):
        ax[1, 0].axhline(v, lw=1.0, label=lab, **sty)
    ax[1, 0].set_xlabel("step $t$")
    ax[1, 0].set_ylabel(r"std / mean of $\langle\mu^*, x\rangle$")
    ax[1, 0].legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax[1, 1].set_yscale("log")
    ax[1, 1].set_xlabel("step $t$")
    ax[1, 1].set_ylabel(r"$\beta(t)$")
    ax[1, 1].legend()
    fig.tight_layout()
    return fig


def _annotated_heatmap(ax, p, lo, hi, B, T, **heatmap_kw):
    """A seaborn annotated heat map of ``p`` (rows ``B``, columns ``T``) on ``ax``: each cell shows
    the estimate and, when ``lo``/``hi`` are given, its Wilson 95% interval. Rows are reversed
    so that beta_i grows upwards, as on the other heat maps of the book."""
    import seaborn as sns

    labels = np.array([[f"{p[i, j]:.2f}" + ("" if lo is None else
                                            f"\n[{lo[i, j]:.2f}, {hi[i, j]:.2f}]")
                        for j in range(len(T))] for i in range(len(B))])
    sns.heatmap(p[::-1], annot=labels[::-1], fmt="", vmin=0, vmax=1, cmap="viridis",
                xticklabels=[f"{t:.0f}" for t in T], yticklabels=[f"{b:.3g}" for b in B[::-1]],
                annot_kws={"fontsize": 9}, ax=ax, **heatmap_kw)
    ax.set_xlabel("annealing time $t_0$ (steps)")
    ax.tick_params(axis="y", rotation=0)
    ax.grid(False)   # grid lines would cut through the cell numbers


def plot_flow_heatmap(fg: FlowGrid):
    """Collapse probability over (beta_i, t0) with the Wilson 95% interval in each cell (a
    seaborn annotated heat map; hottest start at the bottom)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    _annotated_heatmap(ax, fg.pc, fg.lo, fg.hi, fg.B, fg.T,
                       cbar_kws={"label": "P(collapse)"})
    ax.set_ylabel(r"initial inverse temperature $\beta_i$")
    return fig


def plot_rate(fg: FlowGrid):
    """Collapse probability against the annealing rate ``beta_i^(-1/t0) - 1``, one marker and
    colour per annealed beta_i, Wilson 95% bars; markers only (three t0 per row do not define a
    curve between them), legend beside the axes."""
    import matplotlib.pyplot as plt

    from .collapse_plots import ROW_COLOURS, ROW_MARKERS

    B, T, pc, lo, hi = fg.B, fg.T, fg.pc, fg.lo, fg.hi
    fig, ax = plt.subplots(figsize=(6.6, 4))
    for i, b in enumerate(B):
        if b >= 1:
            continue
        rate = annealing_rate(b, T)
        ax.errorbar(rate - 1, pc[i], yerr=[pc[i] - lo[i], hi[i] - pc[i]], ls="none",
                    marker=ROW_MARKERS[i % len(ROW_MARKERS)], color=ROW_COLOURS[i % len(ROW_COLOURS)],
                    capsize=3, ms=6, label=rf"$\beta_i$ = {b:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel(r"annealing rate $\beta_i^{-1/t_0} - 1$ (per step)")
    ax.set_ylabel("P(collapse)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def rate_verdict(fg: FlowGrid, factor: float = 1.5) -> str:
    """Does the rate alone decide the flow's collapse? Looks for two cells of different annealed
    rows whose rates ``beta_i^(-1/t0) - 1`` are within ``factor`` of each other and whose Wilson
    95% intervals do not overlap; returns one Markdown sentence naming the clearest such pair."""
    B, T, pc, lo, hi = fg.B, fg.T, fg.pc, fg.lo, fg.hi
    cells = [(i, j, float(annealing_rate(B[i], T[j]) - 1.0)) for i in range(len(B)) if B[i] < 1
             for j in range(len(T))]
    best = None
    for a, (i, j, ra) in enumerate(cells):
        for (k, l, rb) in cells[a + 1:]:
            if i == k or max(ra, rb) / min(ra, rb) > factor:
                continue
            gap = max(lo[i, j] - hi[k, l], lo[k, l] - hi[i, j])
            if gap > 0 and (best is None or gap > best[0]):
                best = (gap, (i, j, ra), (k, l, rb))
    if best is None:
        return (f"No two rows differ beyond their intervals at rates within a factor {factor:g} "
                "of each other: on this grid the rate alone is consistent with the data.")
    _, (i, j, ra), (k, l, rb) = best
    return (f"The rate alone does not decide: at nearly the same rate, $\\beta_i$ = {B[i]:.3g} "
            f"($t_0$ = {T[j]:.0f}, rate {ra:.2g}) collapses with probability {pc[i, j]:.2f} "
            f"[{lo[i, j]:.2f}, {hi[i, j]:.2f}] and $\\beta_i$ = {B[k]:.3g} ($t_0$ = {T[l]:.0f}, "
            f"rate {rb:.2g}) with {pc[k, l]:.2f} [{lo[k, l]:.2f}, {hi[k, l]:.2f}]: the intervals do "
            "not overlap.")


def plot_flow_vs_gmm(fg: FlowGrid, pg: np.ndarray, pg_lo: np.ndarray | None = None,
                     pg_hi: np.ndarray | None = None):
    """Side-by-side seaborn heat maps: RealNVP (``fg.pc``) and GMM student (``pg``) on the same
    cells, each cell with its Wilson 95% interval (the GMM's from ``pg_lo``, ``pg_hi`` when
    given), one shared colour bar."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 4.4))
    grid = fig.add_gridspec(1, 3, width_ratios=(1, 1, 0.05), wspace=0.12)
    axs = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
    cax = fig.add_subplot(grid[0, 2])
    _annotated_heatmap(axs[0], fg.pc, fg.lo, fg.hi, fg.B, fg.T, cbar=False)
    _annotated_heatmap(axs[1], pg, pg_lo, pg_hi, fg.B, fg.T, cbar_ax=cax,
                       cbar_kws={"label": "P(collapse)"})
    axs[0].set_title("RealNVP")
    axs[1].set_title("GMM student")
    axs[0].set_ylabel(r"$\beta_i$")
    axs[1].set_yticklabels([])
    return fig


# --------------------------------------------------------------------------------------------
# registered figures (python -m annealvi_lib figures ch4_*)
# --------------------------------------------------------------------------------------------

@register("ch4_demo_run", chapter=4,
          description="one RealNVP run with and one without annealing (marginal, KL, std, beta)")
def fig_demo_run(preset: Preset):
    cfg = preset.realnvp_grid
    return plot_demo_run(demo_runs(cfg), cfg)


@register("ch4_heatmap", chapter=4,
          description="RealNVP collapse probability over (beta_i, t0) with Wilson intervals")
def fig_heatmap(preset: Preset):
    return plot_flow_heatmap(flow_grid(preset.realnvp_grid))


@register("ch4_rate", chapter=4,
          description="RealNVP collapse probability against the annealing rate")
def fig_rate(preset: Preset):
    return plot_rate(flow_grid(preset.realnvp_grid))


@register("ch4_flow_vs_gmm", chapter=4,
          description="RealNVP and GMM-student collapse probability on the same grid")
def fig_flow_vs_gmm(preset: Preset):
    cfg = preset.realnvp_grid
    p, lo, hi, _ = gmm_comparison_cells(cfg)
    return plot_flow_vs_gmm(flow_grid(cfg), p, lo, hi)


def benchmark_rows() -> tuple[list[dict], str] | None:
    """RealNVP training throughput rows from ``benchmarks/bench_realnvp.py``'s JSON (see
    :func:`annealvi_lib.paths.load_benchmark`). Returns ``(rows, source)`` or ``None``."""
    from .paths import load_benchmark

    loaded = load_benchmark("bench_realnvp")
    return None if loaded is None else (loaded[0]["rows"], loaded[1])


# --------------------------------------------------------------------------------------------
# archives: the grid and the side studies (too long for a CPU book build)
# --------------------------------------------------------------------------------------------

#: Archive folders under ``data/`` (``python -m annealvi_lib realnvp-archive grid|studies``).
GRID_ARCHIVE = "realnvp_grid"
STUDIES_ARCHIVE = "realnvp_studies"
#: fields of RealNVPGridConfig that only the side studies read
_SIDE_FIELDS = ("trend_dims", "trend_cells", "trend_seeds", "compare_seeds")


def grid_archive_config(cfg: RealNVPGridConfig) -> dict:
    """What the grid's numbers depend on: the configuration minus the side-study settings
    (compared with an archive's provenance)."""
    d = dataclasses.asdict(cfg)
    for k in _SIDE_FIELDS:
        d.pop(k)
    return json_roundtrip({"realnvp_grid": d, "beta_is": list(cfg.beta_is)})


def json_roundtrip(obj):
    """``obj`` as it comes back from JSON (tuples -> lists), for comparing with an archive."""
    import json

    return json.loads(json.dumps(obj, default=str))


#: per-run columns of the archives (beside the cell and replicate)
_RUN_COLUMNS = ("collapsed", "failed", "proj_std", "proj_mean", "mass_plus", "ess", "kl")


def _run_rows(res, **label) -> list[dict]:
    return [{**label, "beta_i": r["beta_i"], "t0": r["t0"], "replicate": r["replicate"],
             **{k: r[k] for k in _RUN_COLUMNS}} for r in res.runs]


def _cell_rows(res, **label) -> list[dict]:
    return [{**label, **{k: r[k] for k in ("beta_i", "t0", "n_runs", "n_collapsed", "n_failed",
                                           "p_collapse", "ci_low", "ci_high")}}
            for r in res.summary]


def write_grid_archive(cfg: RealNVPGridConfig, folder, workers: int = 1, command: str = "",
                       progress: bool | None = None):
    """Run the grid of ``cfg`` from scratch (an empty temporary cache, so every run is computed
    by this code and the runtime is the computation's) and archive it in ``folder``:
    ``realnvp_cells.csv`` (one row per cell), ``realnvp_runs.csv`` (one row per run) and
    ``provenance.json``."""
    import tempfile

    from .archive import write_archive

    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_realnvp_") as fresh:
        res = run_grid("realnvp", cfg, workers=workers, progress=progress, cache=fresh)
    return write_archive(folder, {"realnvp_cells.csv": _cell_rows(res),
                                  "realnvp_runs.csv": _run_rows(res)},
                         grid_archive_config(cfg), time.perf_counter() - t, command)


def _numeric_rows(rows: list[dict], keep_str=()) -> list[dict]:
    """CSV rows with every value but ``keep_str`` as a float (ints stay exact in float64)."""
    return [{k: (v if k in keep_str else float(v)) for k, v in r.items()} for r in rows]


def load_grid_archive(cfg: RealNVPGridConfig):
    """``(cell rows, run rows, provenance)`` of ``data/GRID_ARCHIVE`` when its configuration is
    ``cfg``'s, else ``None``; values as floats."""
    from .archive import data_dir, read_archive

    got = read_archive(data_dir(GRID_ARCHIVE))
    if got is None or got[1]["config"] != grid_archive_config(cfg):
        return None
    tables, prov = got
    return (_numeric_rows(tables["realnvp_cells.csv"]), _numeric_rows(tables["realnvp_runs.csv"]),
            prov)


def studies_config(cfg: RealNVPGridConfig, cells: list[tuple[float, float]]) -> dict:
    """What the side studies' numbers depend on: the grid configuration, the trend settings and
    the comparison cells."""
    return json_roundtrip({"realnvp_grid": dataclasses.asdict(cfg), "compare_cells": cells,
                           "arms": [list(a) for a in COMPARE_ARMS]})


#: arms of the comparisons: (name, field of RealNVPGridConfig, value); the first is the base
COMPARE_ARMS = (("base", "norm", "beta"), ("batch norm", "norm", "batch"),
                ("torch init", "init", "torch"))


def compare_cells(cells: list[dict]) -> list[tuple[float, float]]:
    """The two cells of the powered comparisons, chosen from the grid's cell rows by a fixed
    rule: no annealing at the shortest t0, and the annealed cell whose collapse probability is
    closest to 1/2 (where a change of the probability is easiest to detect; ties: the longer
    t0, then the hotter start)."""
    t_min = min(r["t0"] for r in cells)
    ann = [r for r in cells if r["beta_i"] < 1]
    best = min(ann, key=lambda r: (abs(r["p_collapse"] - 0.5), -r["t0"], r["beta_i"]))
    return [(1.0, float(t_min)), (float(best["beta_i"]), float(best["t0"]))]


def run_studies(cfg: RealNVPGridConfig, cells: list[tuple[float, float]], workers: int = 1,
                progress: bool | None = None, cache=None) -> dict[str, list[dict]]:
    """The side studies: the dimension trend (``cfg.trend_cells`` at every ``cfg.trend_dims``,
    ``cfg.trend_seeds`` runs each) and the comparisons (every arm of :data:`COMPARE_ARMS` on
    ``cells``, ``cfg.compare_seeds`` runs each). Runs of a cell use the keys of the grid's cell
    (replicates 0, 1, ...), so the arms of a comparison are paired.

    Returns the tables ``trend_cells.csv``, ``trend_runs.csv``, ``compare_cells.csv``,
    ``compare_runs.csv`` (rows labelled by ``d`` or ``arm``).
    """
    out = {"trend_cells.csv": [], "trend_runs.csv": [], "compare_cells.csv": [],
           "compare_runs.csv": []}
    for d in cfg.trend_dims:
        c = dataclasses.replace(cfg, d=int(d), n_seeds=cfg.trend_seeds)
        res = run_grid("realnvp", c, cells=list(cfg.trend_cells), workers=workers,
                       progress=progress, cache=cache)
        out["trend_cells.csv"] += _cell_rows(res, d=int(d))
        out["trend_runs.csv"] += _run_rows(res, d=int(d))
    for arm, field, value in COMPARE_ARMS:
        c = dataclasses.replace(cfg, n_seeds=cfg.compare_seeds, **{field: value})
        res = run_grid("realnvp", c, cells=cells, workers=workers, progress=progress,
                       cache=cache)
        out["compare_cells.csv"] += _cell_rows(res, arm=arm)
        out["compare_runs.csv"] += _run_rows(res, arm=arm)
    return out


def write_studies_archive(cfg: RealNVPGridConfig, folder, workers: int = 1, command: str = "",
                          progress: bool | None = None):
    """Run the side studies from scratch and archive them in ``folder``. The comparison cells
    come from the grid (:func:`compare_cells` of the grid archive when it matches ``cfg``,
    else of the grid computed into the results cache)."""
    import tempfile

    from .archive import write_archive

    cells = compare_cells(flow_grid_rows(cfg, workers=workers)[0])
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_realnvp_side_") as fresh:
        tables = run_studies(cfg, cells, workers=workers, progress=progress, cache=fresh)
    return write_archive(folder, tables, studies_config(cfg, cells), time.perf_counter() - t,
                         command)


def flow_grid_rows(cfg: RealNVPGridConfig, workers: int = 1, progress: bool | None = None):
    """``(cell rows, run rows, provenance or None)`` of the grid of ``cfg``: from the archive
    ``data/GRID_ARCHIVE`` when it holds this configuration, else computed (cached)."""
    got = load_grid_archive(cfg)
    if got is not None:
        return got
    res = run_grid("realnvp", cfg, workers=workers, progress=progress)
    return (_numeric_rows(_cell_rows(res)), _numeric_rows(_run_rows(res)), None)


def load_studies(cfg: RealNVPGridConfig, workers: int = 1, progress: bool | None = None):
    """``(tables, provenance or None)`` of the side studies: from ``data/STUDIES_ARCHIVE`` when
    it holds this configuration, else computed (cached)."""
    from .archive import data_dir, read_archive

    cells = compare_cells(flow_grid_rows(cfg, workers=workers)[0])
    got = read_archive(data_dir(STUDIES_ARCHIVE))
    if got is not None and got[1]["config"] == studies_config(cfg, cells):
        tables, prov = got
        return ({k: _numeric_rows(v, keep_str=("arm",)) for k, v in tables.items()}, prov)
    tables = run_studies(cfg, cells, workers=workers, progress=progress)
    return ({k: _numeric_rows(v, keep_str=("arm",)) for k, v in tables.items()}, None)
