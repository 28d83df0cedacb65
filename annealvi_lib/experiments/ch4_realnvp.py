"""Chapter 4's computations: the demo training run, the RealNVP collapse grid, the same grid
with the GMM student, the dimension trend, the normalisation and initialisation comparisons,
the collapse criteria and the verdicts on the paper's claims -- and the chapter's registered
figures.

Every function takes the preset's :class:`~annealvi_lib.config.RealNVPGridConfig`. The grid and
the side studies of the ``book`` preset take about an hour on 2 cores, so they are archived
under ``data/`` (:data:`GRID_ARCHIVE`, :data:`STUDIES_ARCHIVE`; ``python -m annealvi_lib
realnvp-archive grid|studies``) with their provenance; a configuration that does not match an
archive is computed by the cached grid runner (:func:`annealvi_lib.experiments.grid.run_grid`, one file per
cell), so the notebook and ``python -m annealvi_lib figures ch4_*`` share them. The demo run is
recomputed each time.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import numpy as np

from ..models import realnvp as rn
from ..config import GMMGridConfig, Preset, Problem, RealNVPGridConfig, grid_beta
from ..figures.registry import register
from ..archive import json_roundtrip
from .grid import run_grid
from ..metrics import COLLAPSE_STD, run_summary, target_projection_std, wilson_interval
from ..models.schedules import Schedule, annealing_rate

__all__ = ["DEMO_ARMS", "DemoSetting", "demo_setting", "demo_runs", "demo_summary", "FlowGrid",
           "flow_grid", "gmm_comparison_config",
           "plot_demo_run", "plot_flow_heatmap", "plot_rate", "plot_flow_vs_gmm", "plot_trend",
           "gmm_comparison_cells", "gmm_trend", "trend_rows", "compare_rows", "compare_verdict",
           "GRID_ARCHIVE", "STUDIES_ARCHIVE", "grid_archive_config", "write_grid_archive",
           "load_grid_archive", "flow_grid_rows", "studies_config", "COMPARE_ARMS",
           "compare_cells", "run_studies", "write_studies_archive", "load_studies", "CRITERIA",
           "SMALL_DIFFERENCE", "CLAIMS", "collapsed_by", "cell_counts", "trend_roles",
           "verdicts_from_cells", "verdicts_from_grid", "conclusions"]

#: the two arms of the demo run, in plotting order
DEMO_ARMS = ("annealed", "no annealing")


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
    a seed axis (:func:`annealvi_lib.models.realnvp.train`).
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
    ``counts``: ``{(beta_i, t0): (k, n)}``; ``runs``: the per-run rows; ``n_failed``: runs
    flagged failed over the grid; ``provenance``: the archive's provenance, or ``None`` when the
    grid was computed (or loaded from the results cache) here; ``seconds``: wall time of loading
    or computing it.
    """

    B: np.ndarray
    T: np.ndarray
    pc: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    counts: dict
    runs: list
    n_failed: int
    provenance: dict | None
    seconds: float


def flow_grid(cfg: RealNVPGridConfig, progress: bool | None = None,
              workers: int = 1) -> FlowGrid:
    """The RealNVP grid of ``cfg``: from the archive ``data/GRID_ARCHIVE`` when it holds this
    configuration, else computed (cached); collapse by the paper's criterion, std < 1.6."""
    t = time.perf_counter()
    cells, runs, prov = flow_grid_rows(cfg, workers=workers, progress=progress)
    seconds = time.perf_counter() - t
    B = np.array(cfg.beta_is)
    T = np.array(cfg.t0s)
    summ = {(r["beta_i"], r["t0"]): r for r in cells}
    pc, lo, hi = (np.array([[summ[(float(b), float(t))][f] for t in T] for b in B])
                  for f in ("p_collapse", "ci_low", "ci_high"))
    counts = {k: (int(r["n_collapsed"]), int(r["n_runs"] - r["n_failed"])) for k, r in summ.items()}
    n_failed = int(sum(r["n_failed"] for r in cells))
    return FlowGrid(B, T, pc, lo, hi, counts, runs, n_failed, prov, seconds)


def gmm_comparison_config(cfg: RealNVPGridConfig, d: int | None = None) -> GMMGridConfig:
    """The GMM-student grid on the same (beta_i, t0) cells, target, batch, seeds and run length
    as the RealNVP grid (JKO step from :class:`~annealvi_lib.config.Problem`, exact sampler),
    at dimension ``d`` (default ``cfg.d``)."""
    d = cfg.d if d is None else int(d)
    return GMMGridConfig(problem=Problem(d=d, R=cfg.R, w_star=cfg.w_star, batch=cfg.batch),
                         log10_beta_r2=tuple(float(np.log10(b * cfg.R**2)) for b in cfg.beta_is),
                         t0s=cfg.t0s, n_seeds=cfg.n_seeds, n_iter_extra=cfg.n_iter_extra,
                         sampler="exact", seed=cfg.seed)


def _gmm_lookup(summary) -> dict:
    # beta_i = 10^k / R^2 with k = log10(beta_i R^2) round-trips only to ~1e-15
    return {(round(r["beta_i"], 10), r["t0"]): r for r in summary}


def _gmm_grid_rows(cfg: RealNVPGridConfig, workers: int = 1, progress: bool | None = None,
                   cache=None) -> list[dict]:
    """The GMM student on the RealNVP grid's cells: one row per cell (``beta_i, t0, n_runs,
    n_collapsed, n_failed, p_collapse, ci_low, ci_high``)."""
    res = run_grid("gmm", gmm_comparison_config(cfg), workers=workers, progress=progress,
                   cache=cache)
    return _cell_rows(res)


def _gmm_trend_rows(cfg: RealNVPGridConfig, workers: int = 1, progress: bool | None = None,
                    cache=None) -> list[dict]:
    """The GMM student on the trend cells at every d of the trend: rows as
    :func:`_gmm_grid_rows` with ``d``."""
    rows = []
    for d in cfg.trend_dims:
        g = dataclasses.replace(gmm_comparison_config(cfg, d), n_seeds=cfg.trend_seeds)
        res = run_grid("gmm", g, cells=[(float(b), float(t)) for b, t in cfg.trend_cells],
                       workers=workers, progress=progress, cache=cache)
        rows += _cell_rows(res, d=int(d))
    return rows


def gmm_comparison_cells(cfg: RealNVPGridConfig, tables: dict | None = None,
                         progress: bool | None = None):
    """The GMM student on the RealNVP grid: ``(p, lo, hi, seconds)``, the collapse probability
    and its Wilson 95% interval, each shaped ``(len(B), len(T))`` with rows and columns as in
    :class:`FlowGrid`; from the side-study ``tables`` (:func:`load_studies`) when given, else
    computed (cached)."""
    t = time.perf_counter()
    rows = tables["gmm_cells.csv"] if tables is not None else _gmm_grid_rows(cfg, progress=progress)
    gsum = _gmm_lookup(rows)
    p, lo, hi = (np.array([[gsum[(round(float(b), 10), float(t))][key] for t in cfg.t0s]
                           for b in cfg.beta_is]) for key in ("p_collapse", "ci_low", "ci_high"))
    return p, lo, hi, time.perf_counter() - t


def gmm_trend(cfg: RealNVPGridConfig, tables: dict | None = None,
              progress: bool | None = None) -> list[dict]:
    """The GMM student on the trend cells at every d of the trend (exact sampler, the flow's
    batch, ``cfg.trend_seeds`` runs): rows ``d, beta_i, t0, p, lo, hi, n``; from the side-study
    ``tables`` when given, else computed (cached)."""
    raw = (tables["gmm_trend_cells.csv"] if tables is not None
           else _gmm_trend_rows(cfg, progress=progress))
    rows = []
    for d in cfg.trend_dims:
        look = _gmm_lookup([r for r in raw if int(r["d"]) == int(d)])
        for b, t in cfg.trend_cells:
            r = look[(round(float(b), 10), float(t))]
            rows.append({"d": int(d), "beta_i": float(b), "t0": float(t),
                         "p": float(r["p_collapse"]), "lo": float(r["ci_low"]),
                         "hi": float(r["ci_high"]), "n": int(r["n_runs"] - r["n_failed"])})
    return rows


def trend_rows(tables: dict, criterion: tuple, w_star: float) -> list[dict]:
    """The flow's trend cells from the side-study tables: rows ``d, beta_i, t0, k, n, p, lo,
    hi`` under ``criterion``."""
    runs = tables["trend_runs.csv"]
    out = []
    for d in sorted({int(r["d"]) for r in runs}):
        counts = cell_counts([r for r in runs if int(r["d"]) == d], criterion, w_star)
        for (b, t), (k, n) in counts.items():
            lo, hi = wilson_interval(k, max(n, 1))
            out.append({"d": d, "beta_i": b, "t0": t, "k": k, "n": n,
                        "p": k / n if n else float("nan"), "lo": float(lo), "hi": float(hi)})
    return out


def compare_rows(tables: dict, criterion: tuple, w_star: float) -> list[dict]:
    """The comparisons: one row per (cell, arm) with ``beta_i, t0, arm, k, n, p, lo, hi`` and,
    for the arms other than the base, ``diff, diff_lo, diff_hi`` (arm minus base, Newcombe 95%
    interval)."""
    from ..metrics import difference_interval

    runs = tables["compare_runs.csv"]
    by_arm = {a: cell_counts([r for r in runs if r["arm"] == a], criterion, w_star)
              for a, _, _ in COMPARE_ARMS}
    base = COMPARE_ARMS[0][0]
    out = []
    for cell in by_arm[base]:
        kb, nb = by_arm[base][cell]
        for arm, _, _ in COMPARE_ARMS:
            k, n = by_arm[arm][cell]
            lo, hi = wilson_interval(k, n)
            row = {"beta_i": cell[0], "t0": cell[1], "arm": arm, "k": k, "n": n, "p": k / n,
                   "lo": float(lo), "hi": float(hi)}
            if arm != base:
                dd, dl, dh = difference_interval(k, n, kb, nb)
                row.update(diff=float(dd), diff_lo=float(dl), diff_hi=float(dh))
            out.append(row)
    return out


def compare_verdict(rows: list[dict], arm: str) -> str:
    """One Markdown sentence on ``arm`` against the base arm, from the Newcombe intervals."""
    rs = [r for r in rows if r["arm"] == arm]
    parts = [f"β_i = {r['beta_i']:.3g}, t0 = {r['t0']:.0f}: {r['diff']:+.2f} "
             f"[{r['diff_lo']:+.2f}, {r['diff_hi']:+.2f}]" for r in rs]
    changed = [r for r in rs if r["diff_lo"] > 0 or r["diff_hi"] < 0]
    small = [r for r in rs if -SMALL_DIFFERENCE < r["diff_lo"] and r["diff_hi"] < SMALL_DIFFERENCE]
    n = min(r["n"] for r in rs)
    if changed:
        verdict = (f"the change is beyond its interval in {len(changed)} of {len(rs)} cells: "
                   f"{arm} changes the collapse probability there")
    elif len(small) == len(rs):
        verdict = (f"every interval lies within ±{SMALL_DIFFERENCE:g}: with {n} runs per arm, "
                   f"{arm} changes the collapse probability by less than {SMALL_DIFFERENCE:g} "
                   "in these cells")
    else:
        verdict = (f"no interval excludes zero, but not every one excludes a change of "
                   f"{SMALL_DIFFERENCE:g}: with {n} runs per arm the effect is not resolved")
    return f"P({arm}) − P(base): " + "; ".join(parts) + f" — {verdict}."


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

    fig, ax = plt.subplots(figsize=(1.1 * len(fg.T) + 2.2, 0.55 * len(fg.B) + 1.4))
    _annotated_heatmap(ax, fg.pc, fg.lo, fg.hi, fg.B, fg.T,
                       cbar_kws={"label": "P(collapse)"})
    ax.set_ylabel(r"initial inverse temperature $\beta_i$")
    return fig


def plot_rate(fg: FlowGrid):
    """Collapse probability against the annealing rate ``beta_i^(-1/t0) - 1``, one marker and
    colour per annealed beta_i, Wilson 95% bars; markers only (three t0 per row do not define a
    curve between them), legend beside the axes."""
    import matplotlib.pyplot as plt

    from ..figures.collapse_plots import ROW_MARKERS

    B, T, pc, lo, hi = fg.B, fg.T, fg.pc, fg.lo, fg.hi
    fig, ax = plt.subplots(figsize=(6.6, 4))
    n_ann = int(np.sum(B < 1))
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, max(n_ann, 1)))   # one colour per row
    for i, b in enumerate(B):
        if b >= 1:
            continue
        rate = annealing_rate(b, T)
        # clipped at 0: a Wilson bound of 1 can come out as 0.9999999999999999
        ax.errorbar(rate - 1, pc[i], yerr=np.clip([pc[i] - lo[i], hi[i] - pc[i]], 0, None),
                    ls="none",
                    marker=ROW_MARKERS[i % len(ROW_MARKERS)], color=colours[i],
                    capsize=3, ms=6, label=rf"$\beta_i$ = {b:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel(r"annealing rate $\beta_i^{-1/t_0} - 1$ (per step)")
    ax.set_ylabel("P(collapse)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_flow_vs_gmm(fg: FlowGrid, pg: np.ndarray, pg_lo: np.ndarray | None = None,
                     pg_hi: np.ndarray | None = None):
    """Side-by-side seaborn heat maps: RealNVP (``fg.pc``) and GMM student (``pg``) on the same
    cells, each cell with its Wilson 95% interval (the GMM's from ``pg_lo``, ``pg_hi`` when
    given), one shared colour bar."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(max(11.0, 2.2 * len(fg.T) + 1.0), 0.55 * len(fg.B) + 1.6))
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


def plot_trend(flow_rows: list[dict], gmm_rows: list[dict], cells, beta_c: float):
    """Collapse probability against the dimension d, one panel per trend cell: the flow (filled
    markers, Wilson 95% bars) and the GMM student on the same target, batch and cell (open
    markers, dashed)."""
    import matplotlib.pyplot as plt

    cells = [(float(b), float(t)) for b, t in cells]
    fig, axs = plt.subplots(1, len(cells), figsize=(3.0 * len(cells) + 0.6, 3.6), sharey=True,
                            squeeze=False)
    for ax, (b, t) in zip(axs[0], cells):
        for rows, lab, sty in ((flow_rows, "RealNVP", dict(color="C0", marker="o", ls="-")),
                               (gmm_rows, "GMM student", dict(color="C3", marker="s", ls="--",
                                                              mfc="white"))):
            rs = sorted((r for r in rows if r["beta_i"] == b and r["t0"] == t),
                        key=lambda r: r["d"])
            if not rs:
                continue
            x = np.array([r["d"] for r in rs], float)
            p = np.array([r["p"] for r in rs])
            err = np.clip([p - np.array([r["lo"] for r in rs]),
                           np.array([r["hi"] for r in rs]) - p], 0, None)
            ax.errorbar(x, p, yerr=err, capsize=3, ms=6, label=lab, **sty)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["d"] for r in flow_rows}))
        ax.set_xticklabels([str(v) for v in sorted({r["d"] for r in flow_rows})])
        kind = ("no annealing" if b == 1 else "start above $\\beta_c$" if b >= beta_c
                else "start below $\\beta_c$")
        ax.set_title(f"{kind}\n$\\beta_i$ = {b:.3g}, $t_0$ = {t:.0f}", fontsize=10)
        ax.set_xlabel("dimension $d$")
        ax.set_ylim(-0.05, 1.05)
    axs[0, 0].set_ylabel("P(collapse)")
    # one legend above the panels: inside a panel it would cover error bars
    handles, labels = axs[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, fontsize=9,
               bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
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
    p, lo, hi, _ = gmm_comparison_cells(cfg, load_studies(cfg)[0])
    return plot_flow_vs_gmm(flow_grid(cfg), p, lo, hi)


@register("ch4_trend", chapter=4,
          description="RealNVP and GMM-student collapse probability against the dimension d")
def fig_trend(preset: Preset):
    from ..theory.collapse import critical_beta

    cfg = preset.realnvp_grid
    tables, _ = load_studies(cfg)
    return plot_trend(trend_rows(tables, CRITERIA[1], cfg.w_star), gmm_trend(cfg, tables),
                      cfg.trend_cells, critical_beta(cfg.R, cfg.w_star))


def benchmark_rows() -> tuple[list[dict], str] | None:
    """RealNVP training throughput rows from ``benchmarks/bench_realnvp.py``'s JSON (see
    :func:`annealvi_lib.paths.load_benchmark`). Returns ``(rows, source)`` or ``None``."""
    from ..paths import load_benchmark

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

    from ..archive import current_commit, write_archive

    commit = current_commit()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_realnvp_") as fresh:
        res = run_grid("realnvp", cfg, workers=workers, progress=progress, cache=fresh)
    return write_archive(folder, {"realnvp_cells.csv": _cell_rows(res),
                                  "realnvp_runs.csv": _run_rows(res)},
                         grid_archive_config(cfg), time.perf_counter() - t, command, commit)


def _numeric_rows(rows: list[dict], keep_str=()) -> list[dict]:
    """CSV rows with every value but ``keep_str`` as a float (ints stay exact in float64)."""
    return [{k: (v if k in keep_str else float(v)) for k, v in r.items()} for r in rows]


def load_grid_archive(cfg: RealNVPGridConfig):
    """``(cell rows, run rows, provenance)`` of ``data/GRID_ARCHIVE`` when its configuration is
    ``cfg``'s, else ``None``; values as floats."""
    from ..archive import data_dir, read_archive

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
    ``cells``, ``cfg.compare_seeds`` runs each), and the GMM student on the grid's cells and on
    the trend cells (:func:`gmm_comparison_config`). Runs of a cell use the keys of the grid's
    cell (replicates 0, 1, ...), so the arms of a comparison are paired.

    Returns the tables ``trend_cells.csv``, ``trend_runs.csv``, ``compare_cells.csv``,
    ``compare_runs.csv`` (rows labelled by ``d`` or ``arm``), ``gmm_cells.csv`` and
    ``gmm_trend_cells.csv``.
    """
    out = {"trend_cells.csv": [], "trend_runs.csv": [], "compare_cells.csv": [],
           "compare_runs.csv": [],
           "gmm_cells.csv": _gmm_grid_rows(cfg, workers=workers, progress=progress, cache=cache),
           "gmm_trend_cells.csv": _gmm_trend_rows(cfg, workers=workers, progress=progress,
                                                  cache=cache)}
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

    from ..archive import current_commit, write_archive

    commit = current_commit()
    cells = compare_cells(flow_grid_rows(cfg, workers=workers)[0])
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_realnvp_side_") as fresh:
        tables = run_studies(cfg, cells, workers=workers, progress=progress, cache=fresh)
    return write_archive(folder, tables, studies_config(cfg, cells), time.perf_counter() - t,
                         command, commit)


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
    from ..archive import data_dir, read_archive

    cells = compare_cells(flow_grid_rows(cfg, workers=workers)[0])
    got = read_archive(data_dir(STUDIES_ARCHIVE))
    if got is not None and got[1]["config"] == studies_config(cfg, cells):
        tables, prov = got
    else:
        tables, prov = run_studies(cfg, cells, workers=workers, progress=progress), None
    # computed or read back, the same plain numbers
    return {k: _numeric_rows(v, keep_str=("arm",)) for k, v in tables.items()}, prov


# --------------------------------------------------------------------------------------------
# collapse criteria and the paper's claims, decided from the intervals
# --------------------------------------------------------------------------------------------

#: collapse criteria compared on the archived runs: (label, kind, threshold); "std": std of
#: <mu*, x> below the threshold (the paper's is 1.6); "mass": the less-covered side of the
#: hyperplane <mu*, x> = 0 holds less than half the light mode's weight, (1 - w*) / 2
CRITERIA = (("std < 1.4", "std", 1.4), ("std < 1.6 (paper)", "std", 1.6),
            ("std < 1.8", "std", 1.8), ("light-side mass < (1 - w*)/2", "mass", None))
#: a difference of collapse probabilities smaller than this counts as "little" (the smallest
#: difference the powered comparisons are sized to detect)
SMALL_DIFFERENCE = 0.15
#: two cells have "the same rate" when their rates beta_i^(-1/t0) - 1 differ by at most this
#: factor (the flow's collapse probability rises steeply with the rate, so the factor is tight)
RATE_TOLERANCE = 1.1
#: verdict labels
SUPPORTED, CONTRADICTED, UNRESOLVED, UNTESTED = ("supported", "contradicted", "not resolved",
                                                 "not tested")
#: the paper's RealNVP claims, in the order of the conclusions table: (key, statement)
CLAIMS = (("no_annealing", "collapse without annealing (P > 1/2)"),
          ("slower", "less collapse with slower annealing"),
          ("sweet_spot", "a sweet spot in β_i at a fixed t0"),
          ("rate_only", "only the rate matters for hot starts"),
          ("very_hot", "very hot starts worse at a fixed budget"),
          ("near_bc", "little benefit from starts near or above β_c"))


def collapsed_by(runs: list[dict], criterion: tuple, w_star: float) -> np.ndarray:
    """Collapse flags of archived run rows under ``criterion`` (an entry of :data:`CRITERIA`);
    failed runs are never collapsed (they are counted apart)."""
    _, kind, thr = criterion
    failed = np.array([bool(r["failed"]) for r in runs])
    if kind == "std":
        c = np.array([r["proj_std"] < thr for r in runs])
    else:
        m = np.array([r["mass_plus"] for r in runs])
        c = np.minimum(m, 1.0 - m) < 0.5 * (1.0 - w_star)
    return c & ~failed


def cell_counts(runs: list[dict], criterion: tuple, w_star: float) -> dict:
    """``{(beta_i, t0): (k collapsed, n non-failed)}`` of run rows under ``criterion``."""
    flags = collapsed_by(runs, criterion, w_star)
    out: dict = {}
    for r, c in zip(runs, flags):
        k, n = out.setdefault((r["beta_i"], r["t0"]), (0, 0))
        if not r["failed"]:
            out[(r["beta_i"], r["t0"])] = (k + int(c), n + 1)
    return out


def _p_text(k, n) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.2f} [{float(lo):.2f}, {float(hi):.2f}]"


def _d_text(k1, n1, k2, n2, z: float = 1.96):
    from ..metrics import difference_interval

    d, lo, hi = difference_interval(k1, n1, k2, n2, z)
    return float(d), float(lo), float(hi), f"{float(d):+.2f} [{float(lo):+.2f}, {float(hi):+.2f}]"


def trend_roles(cells, beta_c: float) -> dict:
    """The roles of the trend cells: ``vanilla`` (beta_i = 1), ``short`` / ``long`` (the
    annealed start below ``beta_c`` at its shortest and longest t0) and ``above`` (an annealed
    start at or above ``beta_c``, at the vanilla cell's t0 when there is one)."""
    cells = [(float(b), float(t)) for b, t in cells]
    van = [c for c in cells if c[0] == 1.0]
    below = [c for c in cells if c[0] < beta_c]
    above = [c for c in cells if beta_c <= c[0] < 1.0]
    if not van or len(below) < 2 or not above:
        raise ValueError("trend_cells must hold a beta_i = 1 cell, one start below beta_c at two "
                         f"t0 and one start in [beta_c, 1); got {cells}")
    b_mod = below[0][0]
    mod = sorted((c for c in below if c[0] == b_mod), key=lambda c: c[1])
    if len(mod) < 2:
        raise ValueError(f"trend_cells must hold one start below beta_c at two t0; got {cells}")
    ab = [c for c in above if c[1] == van[0][1]] or above
    return {"vanilla": van[0], "short": mod[0], "long": mod[-1], "above": ab[0]}


def _verdict(lo_ok: bool, hi_bad: bool) -> str:
    return SUPPORTED if lo_ok else CONTRADICTED if hi_bad else UNRESOLVED


def verdicts_from_cells(counts: dict, roles: dict) -> dict:
    """Verdicts of the claims that the trend cells can decide (``no_annealing``, ``slower``,
    ``near_bc``), each ``{"verdict", "evidence"}``, from ``counts`` (:func:`cell_counts`).

    * no_annealing: the Wilson interval of P at beta_i = 1 above 1/2 (supported) or below it;
    * slower: P(short t0) - P(long t0) for the start below beta_c, its Newcombe interval above
      (supported) or below (contradicted) zero;
    * near_bc: the benefit P(no annealing) - P(start above beta_c) at the same t0: interval
      below SMALL_DIFFERENCE (supported, "little"), above it (contradicted).
    """
    out = {}
    k, n = counts[roles["vanilla"]]
    lo, hi = wilson_interval(k, n)
    out["no_annealing"] = {"verdict": _verdict(float(lo) > 0.5, float(hi) < 0.5),
                           "evidence": f"P(β_i = 1, t0 = {roles['vanilla'][1]:.0f}) = "
                                       f"{_p_text(k, n)}"}
    (ks, ns), (kl, nl) = counts[roles["short"]], counts[roles["long"]]
    _, lo, hi, txt = _d_text(ks, ns, kl, nl)
    out["slower"] = {"verdict": _verdict(lo > 0, hi < 0),
                     "evidence": f"β_i = {roles['short'][0]:.3g}: P(t0 = {roles['short'][1]:.0f})"
                                 f" − P(t0 = {roles['long'][1]:.0f}) = {txt}"}
    (kv, nv), (ka, na) = counts[roles["vanilla"]], counts[roles["above"]]
    _, lo, hi, txt = _d_text(kv, nv, ka, na)
    out["near_bc"] = {"verdict": _verdict(hi < SMALL_DIFFERENCE, lo > SMALL_DIFFERENCE),
                      "evidence": f"P(β_i = 1) − P(β_i = {roles['above'][0]:.3g}) at t0 = "
                                  f"{roles['above'][1]:.0f}: {txt}"}
    return out


def verdicts_from_grid(counts: dict, B, T, beta_c: float, hot_fraction: float) -> dict:
    """Verdicts of the claims that need the whole grid (``sweet_spot``, ``rate_only``,
    ``very_hot``), from ``counts`` over rows ``B`` and columns ``T``. Each claim is tested at
    every t0 column with Bonferroni-corrected 95% intervals (Newcombe, ``z`` for 0.05 / the
    number of tests), so that looking at every column does not inflate false verdicts.

    * sweet_spot: at some t0, the best interior annealed row below both the hottest and the
      coldest annealed rows (supported); at some t0, an end row below every interior row
      (contradicted; if both happen, the verdict is "not resolved");
    * very_hot: at some t0, P(hottest) above P(best other annealed row) (supported), at some t0
      below it (contradicted);
    * rate_only: pairs of cells from different hot rows (beta_i <= hot_fraction beta_c) with
      rates beta_i^(-1/t0) - 1 within a factor RATE_TOLERANCE; one pair's interval excluding
      zero contradicts, every pair's interval inside +-SMALL_DIFFERENCE supports.

    The best interior / best other row is picked by its point estimate at each t0; the
    correction covers the t0 columns, not that selection.
    """
    from scipy.stats import norm as _norm

    B = [float(b) for b in B]
    T = [float(t) for t in T]
    ann = [b for b in B if b < 1]
    z_cols = float(_norm.ppf(1 - 0.025 / len(T)))
    out = {}
    hot, cold = min(ann), max(ann)
    interior = [b for b in ann if b not in (hot, cold)]

    def p(b, t):
        k, n = counts[(b, t)]
        return k / max(n, 1)

    if interior:
        sup, con = [], []
        for t in T:
            bi = min(interior, key=lambda b: p(b, t))
            d1 = _d_text(*counts[(hot, t)], *counts[(bi, t)], z=z_cols)
            d2 = _d_text(*counts[(cold, t)], *counts[(bi, t)], z=z_cols)
            if d1[1] > 0 and d2[1] > 0:
                sup.append((min(d1[1], d2[1]), t, bi, d1[3], d2[3]))
            be = min((hot, cold), key=lambda b: p(b, t))
            dd = _d_text(*counts[(bi, t)], *counts[(be, t)], z=z_cols)
            if p(be, t) < p(bi, t) and dd[1] > 0:
                con.append((dd[1], t, be, dd[3]))
        verdict = (UNRESOLVED if sup and con else SUPPORTED if sup else CONTRADICTED if con
                   else UNRESOLVED)
        if sup:
            _, t, bi, t1, t2 = max(sup)
            ev = (f"t0 = {t:.0f}, best interior β_i = {bi:.3g}: P(hottest) − P(best) = {t1}, "
                  f"P(coldest annealed) − P(best) = {t2}")
        elif con:
            _, t, be, t1 = max(con)
            ev = f"t0 = {t:.0f}: P(best interior) − P(β_i = {be:.3g}) = {t1}"
        else:
            ev = "at no t0 does an interval exclude zero"
        out["sweet_spot"] = {"verdict": verdict,
                             "evidence": ev + f" ({len(T)} t0 tested, Bonferroni-corrected)"}
    else:
        out["sweet_spot"] = {"verdict": UNTESTED, "evidence": "fewer than three annealed rows"}
    others = [b for b in ann if b != hot]
    if others:
        res = []
        for t in T:
            bo = min(others, key=lambda b: p(b, t))
            res.append((t, bo, _d_text(*counts[(hot, t)], *counts[(bo, t)], z=z_cols)))
        sup = [r for r in res if r[2][1] > 0]
        con = [r for r in res if r[2][2] < 0]
        pick = (max(sup, key=lambda r: r[2][1]) if sup else min(con, key=lambda r: r[2][2])
                if con else max(res, key=lambda r: r[2][0]))
        out["very_hot"] = {"verdict": (UNRESOLVED if sup and con else _verdict(bool(sup),
                                                                                 bool(con))),
                           "evidence": f"t0 = {pick[0]:.0f}: P(β_i = {hot:.3g}) − P(β_i = "
                                       f"{pick[1]:.3g}, best other) = {pick[2][3]} ({len(T)} t0 "
                                       "tested, Bonferroni-corrected)"}
    else:
        out["very_hot"] = {"verdict": UNTESTED, "evidence": "one annealed row"}
    hot_rows = [b for b in ann if b <= hot_fraction * beta_c]
    cells = [(b, t, annealing_rate(b, t) - 1.0) for b in hot_rows for t in T]
    pairs = [(a, c) for i, a in enumerate(cells) for c in cells[i + 1:]
             if a[0] != c[0] and max(a[2], c[2]) / min(a[2], c[2]) <= RATE_TOLERANCE]
    if not pairs:
        out["rate_only"] = {"verdict": UNTESTED,
                            "evidence": f"no two cells of different hot rows (β_i ≤ "
                                        f"{hot_fraction:g} β_c) have rates within a factor "
                                        f"{RATE_TOLERANCE:g}"}
    else:
        z = float(_norm.ppf(1 - 0.025 / len(pairs)))
        ds = [_d_text(*counts[(a[0], a[1])], *counts[(c[0], c[1])], z=z) for a, c in pairs]
        worst = max(range(len(ds)), key=lambda i: max(ds[i][1], -ds[i][2]))
        a, c = pairs[worst]
        out["rate_only"] = {
            "verdict": _verdict(all(-SMALL_DIFFERENCE < x[1] and x[2] < SMALL_DIFFERENCE
                                    for x in ds), any(x[1] > 0 or x[2] < 0 for x in ds)),
            "evidence": f"{len(pairs)} pairs at matched rate; the most different: "
                        f"(β_i = {a[0]:.3g}, t0 = {a[1]:.0f}) − (β_i = {c[0]:.3g}, t0 = "
                        f"{c[1]:.0f}) = {ds[worst][3]} (Bonferroni-corrected)"}
    return out


def conclusions(trend_runs: list[dict], grid_runs: list[dict], cfg: RealNVPGridConfig,
                beta_c: float, hot_fraction: float, criterion: tuple = CRITERIA[1]) -> list[dict]:
    """The conclusions table: one row per (claim, d) with ``claim``, ``d``, ``verdict``,
    ``evidence``. Trend claims at every d of the trend (the grid's d from the grid's own runs);
    the grid claims at the grid's d only (``not tested`` elsewhere)."""
    roles = trend_roles(cfg.trend_cells, beta_c)
    dims = sorted({int(r["d"]) for r in trend_runs} | {cfg.d})
    rows = []
    by_d = {}
    for d in dims:
        runs = (grid_runs if d == cfg.d and all(c in {(r["beta_i"], r["t0"]) for r in grid_runs}
                                                for c in roles.values())
                else [r for r in trend_runs if int(r["d"]) == d])
        v = verdicts_from_cells(cell_counts(runs, criterion, cfg.w_star), roles)
        if d == cfg.d:
            v.update(verdicts_from_grid(cell_counts(grid_runs, criterion, cfg.w_star),
                                        cfg.beta_is, cfg.t0s, beta_c, hot_fraction))
        by_d[d] = v
    for key, text in CLAIMS:
        for d in dims:
            v = by_d[d].get(key, {"verdict": UNTESTED, "evidence": "needs the whole grid "
                                                                   f"(run at d = {cfg.d})"})
            rows.append({"claim": text, "key": key, "d": d, **v})
    return rows
