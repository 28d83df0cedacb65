"""Chapter 4's figures: the demo training run, the RealNVP collapse grid, its rate collapse,
the flow against the GMM student on the same cells, and the dimension trend.

Each ``plot_*`` function takes results of :mod:`annealvi_lib.experiments.ch4_realnvp` and returns
a matplotlib figure; the ``@register``-ed functions draw the book's figures.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import Preset, RealNVPGridConfig
from ..experiments.ch4_realnvp import (FlowGrid, demo_runs, flow_grid, gmm_comparison_cells,
                                       gmm_trend, load_studies, trend_rows)
from ..experiments.ch4_verdicts import CRITERIA
from ..metrics import COLLAPSE_STD, target_projection_std
from ..models.schedules import annealing_rate
from .registry import register

__all__ = ["plot_demo_run", "plot_flow_heatmap", "plot_rate", "plot_flow_vs_gmm", "plot_trend"]


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

    from ..figures.ch3 import ROW_MARKERS

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
