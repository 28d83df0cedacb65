"""Chapter 3's figures: the collapse-probability grid, its slices, the mechanism, the stability
of the antipodal state, the rate collapse and the batch-size studies (the heatmap and the rate
plot are also drawn by chapter 4).

Every ``plot_*`` function takes plain arrays (e.g. :func:`annealvi_lib.metrics.summary_arrays`
of a grid) and returns a matplotlib figure; the ``@register``-ed functions draw the book's
figures, so the notebook and the ``figures`` command draw identical plots.
"""

from __future__ import annotations

from typing import Callable

import matplotlib.pyplot as plt
import numpy as np

from ..config import Preset
from ..experiments.ch3_collapse_probability import (HOT_FRACTION, branch_scan,
                                                    hot_start_curve, mc_grid,
                                                    mechanism_trajectories, slice_theories,
                                                    stability_scan, theory_grid)
from ..experiments.grid import default_workers
from ..experiments.ch3_finite_batch import batch_scan_theory, load_batch_scan, sensitivity_rows
from ..metrics import UNDECIDED_MAX, undecided_fraction
from ..theory import collapse as C
from .registry import register
from .style import PALETTE
from ..models.schedules import annealing_rate

__all__ = ["ROW_MARKERS", "ROW_COLOURS", "plot_heatmap", "plot_slices", "plot_mechanism",
           "plot_stability", "plot_vs_rate", "plot_symmetric_branch", "plot_batch_sensitivity",
           "plot_batch_scan"]

def plot_heatmap(arrays: dict, iso_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                 iso_label: str = "theory $p=0.5$", R: float = 3.0, title: str = "",
                 undecided_max: float = UNDECIDED_MAX):
    """Heat map of the measured collapse probability over (beta_i, t0).

    Args:
      arrays: output of :func:`summary_arrays`.
      iso_fn: optional ``(beta_i_grid, t0_grid) -> p`` evaluated on a fine grid to draw its
        ``p = 0.5`` iso-line.
      R: mode distance, for the ``beta_i R^2`` axis labels.
      undecided_max: cells where more than this fraction of the finished runs is still
        undecided at the end (``arrays["n_undecided"]``, if present) are hatched.
    """
    betas, t0s = arrays["beta_is"], arrays["t0s"]
    x = np.log10(betas * R**2)
    fig, ax = plt.subplots(figsize=(6.2, 4.6))
    dx = np.diff(x).mean() if x.size > 1 else 1.0
    dt = np.diff(t0s).mean() if t0s.size > 1 else 1.0
    im = ax.imshow(arrays["p_collapse"].T, origin="lower", aspect="auto", cmap="viridis",
                   vmin=0, vmax=1, extent=[x[0] - dx / 2, x[-1] + dx / 2, t0s[0] - dt / 2,
                                           t0s[-1] + dt / 2])
    import matplotlib.patheffects as pe

    cmap = plt.get_cmap("viridis")
    for i in range(betas.size):
        for j in range(t0s.size):
            p = arrays["p_collapse"][i, j]
            # above the iso-line, with a stroke of the cell's own colour that interrupts the line
            # around the digits
            ax.text(x[i], t0s[j], f"{p:.2f}", ha="center", va="center", fontsize=9.5,
                    color="white" if p < 0.6 else "black", zorder=4,
                    path_effects=[pe.withStroke(linewidth=3, foreground=cmap(p))])
    fig.colorbar(im, ax=ax, label=r"measured $P_{\rm collapse}$")
    handles = []
    if "n_undecided" in arrays:
        from matplotlib.patches import Rectangle

        frac = undecided_fraction(arrays)
        for i in range(betas.size):
            for j in range(t0s.size):
                if frac[i, j] > undecided_max:
                    ax.add_patch(Rectangle((x[i] - dx / 2, t0s[j] - dt / 2), dx, dt, fill=False,
                                           hatch="///", edgecolor="0.85", lw=0, zorder=2))
        if (frac > undecided_max).any():
            handles.append(Rectangle((0, 0), 1, 1, fill=False, hatch="///", edgecolor="0.3",
                                     label=f"> {undecided_max:.0%} of runs undecided at the end"))
    ax.grid(False)   # grid lines would cut through the cells
    if iso_fn is not None:
        xf = np.linspace(x[0] - dx / 2, x[-1] + dx / 2, 200)
        tf = np.linspace(t0s[0] - dt / 2, t0s[-1] + dt / 2, 200)
        XX, TT = np.meshgrid(xf, tf, indexing="ij")
        # the cell-edge margins can leave the valid domain: clip to beta <= 1, t0 >= 1
        P = iso_fn(np.minimum(10.0**XX / R**2, 1.0), np.maximum(TT, 1.0))
        # black dashes on a white halo: visible on every colour of the map and, in the legend,
        # on the white page
        halo = [pe.Stroke(linewidth=3.2, foreground="white"), pe.Normal()]
        cs = ax.contour(XX, TT, P, levels=[0.5], colors="black", linestyles="--", linewidths=1.4,
                        zorder=3)
        cs.set_path_effects(halo)
        ax.plot([], [], "--", color="black", lw=1.4, label=iso_label)
    lines, labels = ax.get_legend_handles_labels()
    if lines or handles:
        # above the plot, not over the top row of cells
        ax.legend(lines + handles, labels + [h.get_label() for h in handles], loc="lower left",
                  bbox_to_anchor=(0.0, 1.0), fontsize=9, frameon=False, ncol=1)
    ax.set_xlabel(r"$\log_{10}(\beta_i R^2)$")
    ax.set_ylabel(r"annealing time $t_0$ (steps)")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def _exp10(x: float) -> str:
    """The base-10 exponent of ``x`` for a label: one decimal, "0" rather than "-0.0"."""
    k = round(float(np.log10(x)), 1)
    return "0" if k == 0 else f"{k:.1f}"


def plot_slices(arrays: dict, theories: dict[str, np.ndarray], R: float = 3.0, ncols: int = 4):
    """Per-beta_i slices: measured probability (Wilson 95% bars) against ``t0``, with theories.

    Args:
      theories: name -> probabilities on the grid (n_beta, n_t0), drawn as lines.
    """
    betas, t0s = arrays["beta_is"], arrays["t0s"]
    nrows = int(np.ceil(betas.size / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.2 * nrows), sharex=True,
                             sharey=True, squeeze=False)
    for i, b in enumerate(betas):
        ax = axes.flat[i]
        p = arrays["p_collapse"][i]
        ax.errorbar(t0s, p, yerr=[p - arrays["ci_low"][i], arrays["ci_high"][i] - p], fmt="o",
                    ms=3, color="k", capsize=2, label="Monte Carlo (95% Wilson)")
        # distinct dashes and decreasing widths: a theory drawn on top of another stays visible
        styles = [dict(ls="-", lw=2.6), dict(ls="--", lw=1.6), dict(ls=":", lw=1.8),
                  dict(ls="-.", lw=1.3)]
        for c, sty, (name, pt) in zip(PALETTE, styles, theories.items()):
            ax.plot(t0s, pt[i], color=c, label=name, **sty)
        ax.set_title(f"$\\beta_i R^2 = 10^{{{_exp10(b * R**2)}}}$", fontsize=9)
        ax.set_ylim(-0.03, 1.03)
    for ax in axes.flat[betas.size:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("$t_0$ (steps)")
    for ax in axes[:, 0]:
        ax.set_ylabel(r"$P_{\rm collapse}$")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.1 if nrows > 1 else 0.16, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9,
               frameon=False)                      # below the panels, off the data
    return fig


#: One marker per row of a rate plot, so that rows stay apart where their colours are close.
ROW_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">")
#: Row colours of a rate plot: the palette without black (black is the theory curve) plus grey.
ROW_COLOURS = [c for c in PALETTE if c != "#000000"] + ["#7f7f7f", "#882255"]


def _rate_rows(ax, arrays, rows, curves, R, label_prefix):
    """Draw the rows ``rows`` of ``arrays`` against the annealing rate on ``ax`` (colours and
    markers by position in the whole grid), plus the overlay ``curves``."""
    betas, t0s = arrays["beta_is"], arrays["t0s"]
    for i in rows:
        b = betas[i]
        rate = annealing_rate(b, t0s) - 1.0
        p = arrays["p_collapse"][i]
        ax.errorbar(rate, p, yerr=[p - arrays["ci_low"][i], arrays["ci_high"][i] - p],
                    fmt=ROW_MARKERS[i % len(ROW_MARKERS)], ms=4, capsize=2, lw=1,
                    color=ROW_COLOURS[i % len(ROW_COLOURS)],
                    label=f"{label_prefix}$\\beta_iR^2=10^{{{_exp10(b * R**2)}}}$")
    for c, (name, (rate, pc)) in zip(["k", "gray", PALETTE[1]], (curves or {}).items()):
        ax.plot(np.asarray(rate) - 1.0, pc, "-", color=c, lw=1.6, label=name)
    ax.set_xscale("log")
    ax.set_xlabel(r"annealing rate $\beta_i^{-1/t_0} - 1$ (per step)")


def plot_vs_rate(arrays: dict, curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 R: float = 3.0, ax=None, label_prefix: str = "", beta_c: float | None = None,
                 hot_fraction: float = 1.0):
    """Measured collapse probability against the annealing rate ``beta_i**(-1/t0)``.

    Args:
      arrays: output of :func:`summary_arrays`.
      curves: name -> (rate, p) lines to overlay (e.g. the hot-start master curve).
      beta_c: if given (and ``ax`` is not), two panels: the hot rows,
        ``beta_i <= hot_fraction * beta_c``, where the hot-start limit should apply, and the
        others; each row has its own colour and marker and the legend sits beside the panels,
        off the data.
    """
    betas = arrays["beta_is"]
    rows = list(range(betas.size))
    if ax is not None or beta_c is None:
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.2, 4.0))
        fig = ax.figure
        _rate_rows(ax, arrays, rows, curves, R, label_prefix)
        ax.set_ylabel(r"$P_{\rm collapse}$")
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return fig
    hot = [i for i in rows if betas[i] <= hot_fraction * beta_c]
    cold = [i for i in rows if betas[i] > hot_fraction * beta_c]
    cut = r"\beta_c" if hot_fraction == 1 else rf"{hot_fraction:g}\,\beta_c"
    groups = [(g, t) for g, t in ((hot, rf"$\beta_i\leq{cut}$ (hot starts)"),
                                  (cold, rf"$\beta_i>{cut}$")) if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.3 * len(groups) + 1.6, 3.8),
                             sharey=True, sharex=True, squeeze=False)
    for ax_, (g, title) in zip(axes[0], groups):
        _rate_rows(ax_, arrays, g, curves, R, label_prefix)
        ax_.set_title(title, fontsize=10)
    axes[0, 0].set_ylabel(r"$P_{\rm collapse}$")
    by_label = {}
    for ax_ in axes[0]:
        for h, lab in zip(*ax_.get_legend_handles_labels()):
            by_label.setdefault(lab, h)
    fig.tight_layout(rect=(0, 0, 0.78, 1))
    fig.legend(list(by_label.values()), list(by_label), loc="center left",
               bbox_to_anchor=(0.78, 0.5), fontsize=9, frameon=False)
    return fig


def plot_mechanism(trajs: dict, beta_c: float, lr: float):
    """m1, m2, s against tau for a few ODE runs (name -> OdeTrajectory-like with m1, m2, s, beta),
    with the time where beta crosses beta_c marked."""
    fig, axes = plt.subplots(1, len(trajs), figsize=(4.2 * len(trajs), 3.3), sharey=True,
                             squeeze=False)
    for ax, (name, tr) in zip(axes[0], trajs.items()):
        tau = lr * np.arange(np.asarray(tr.s).shape[-1])
        ax.plot(tau, np.asarray(tr.m1), label="$m_1$")
        ax.plot(tau, np.asarray(tr.m2), label="$m_2$")
        ax.plot(tau, np.asarray(tr.s), label="$s$")
        beta = np.asarray(tr.beta)
        cross = np.nonzero(beta >= beta_c)[0]
        if cross.size:
            ax.axvline(tau[cross[0]], color="gray", ls=":", label=r"$\beta=\beta_c$")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(r"$\tau=\eta t$")
    axes[0, 0].set_ylabel("overlap")
    axes[0, 0].legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_stability(betas, a_rot, lam_rel, a_asym, R: float, beta_c: float, alpha_paper: float):
    """Growth rate of the rotation mode and the relative eigenvalue of the antipodal state against
    beta R^2 (left, log axis), and a linear zoom around the sign change of the relative
    eigenvalue (right), where the derived alpha = beta_c R^2 and the paper's alpha are a few
    percent apart and would coincide on the log axis."""
    x = np.asarray(betas) * R**2
    a_rot, lam_rel, a_asym = (np.asarray(v, float) for v in (a_rot, lam_rel, a_asym))
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(9.6, 3.6),
                                   gridspec_kw=dict(width_ratios=(1.5, 1)))
    alpha_d = beta_c * R**2
    lines = [dict(color=PALETTE[0], lw=2.4, ls="-", label="rotation mode $a$ (growth of $m_1-m_2$)"),
             dict(color="k", lw=1.2, ls=":", label=r"asymptote $R\sqrt{\beta}/\sqrt{2\pi}$"),
             dict(color=PALETTE[2], lw=1.8, ls="--",
                  label=r"relative mode $\lambda_{\rm rel}$ (leaving $s=-1$)")]
    vlines = [(alpha_d, dict(color=PALETTE[1], ls="-.", lw=1.3,
                             label=fr"derived $\alpha={alpha_d:.3f}$")),
              (alpha_paper, dict(color=PALETTE[3], ls=(0, (4, 1.5)), lw=1.3,
                                 label=fr"paper $\alpha={alpha_paper}$"))]
    near = (x >= 0.5 * alpha_d) & (x <= 1.6 * alpha_d)
    for a_, sel in ((ax, slice(None)), (zoom, near)):
        for y, sty in zip((a_rot, a_asym, lam_rel), lines):
            a_.plot(x[sel], y[sel], **sty)
        a_.axhline(0, color="0.4", lw=0.8)
        for xv, sty in vlines:
            a_.axvline(xv, **sty)
        a_.set_xlabel(r"$\beta R^2$")
    ax.set_xscale("log")
    ax.set_ylabel(r"eigenvalue (per unit $\tau$)")
    zoom.set_title(r"zoom on the sign change of $\lambda_{\rm rel}$", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    return fig


def plot_symmetric_branch(ratio, m_branch, tilt):
    """Tilt of the antipodal pair toward the heavy mode against ``beta / beta_c``: the exact
    symmetric branch ``m_b`` (``m1 = m2 = m_b``, ``s = 2 m_b^2 - 1``) and its linear-response
    approximation ``a eps / (2F - a)``, which diverges at beta_c (drawn only where it is positive
    and below 1.2). Returns the figure."""
    ratio, m_branch, tilt = (np.asarray(v, float) for v in (ratio, m_branch, tilt))
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    ax.plot(ratio, m_branch, color=PALETTE[0], lw=2.2,
            label=r"exact branch $m_b$ (root of $2mf(2m^2-1)+g(m)/2$)")
    ok = (tilt > 0) & (tilt < 1.2)
    ax.plot(ratio[ok], tilt[ok], color=PALETTE[1], ls="--", lw=1.6,
            label=r"linear tilt $a\varepsilon/(2F-a)$")
    ax.axvline(1.0, color="0.4", ls=":", lw=1.2, label=r"$\beta_c$ ($\lambda_{\rm rel}=0$)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(r"$\beta/\beta_c$")
    ax.set_ylabel(r"tilt $m_1=m_2$ toward the heavy mode")
    ax.legend(fontsize=9, loc="upper left")
    return fig


def _wilson_bars(ax, x, rows, **style) -> str:
    """Measured ``p_collapse`` of ``rows`` at ``x`` with their 95% Wilson bars (``ci_low``,
    ``ci_high``); ``style`` overrides the default open-circle markers. Returns the colour used."""
    p = np.array([r["p_collapse"] for r in rows])
    lo = np.array([r["ci_low"] for r in rows])
    hi = np.array([r["ci_high"] for r in rows])
    line = ax.errorbar(x, p, yerr=[p - lo, hi - p], **{"fmt": "o", "capsize": 3, **style})
    return line[0].get_color()


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
        c = _wilson_bars(ax, B, grp,
                         label=f"$\\log_{{10}}\\beta_iR^2={cell[0]:g}$, $t_0={cell[1]:g}$")
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


@register("ch3_slices", chapter=3, description="per-beta_i slices: Monte Carlo against both theories")
def fig_slices(preset: Preset):
    G = preset.gmm_grid
    A, _ = mc_grid(G, workers=default_workers(preset.name))
    return plot_slices(A, slice_theories(theory_grid(G)), R=G.problem.R)


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
        c = _wilson_bars(ax, n, grp, label=f"$t_0={t0:g}$")
        ax.plot(n, [r["finite-batch theory"] for r in grp], "-", color=c, lw=1.4)
        ax.axhline(grp[0]["ODE-propagated"], ls="--", lw=1.2, color=c)
        for r in rows:
            if r["t0"] == t0 and r["sampling"] != main:
                _wilson_bars(ax, [r["total_samples"] * 1.08], [r], fmt="s", mfc="white", color=c)
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
