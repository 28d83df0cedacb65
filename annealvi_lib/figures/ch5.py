"""Chapter 5's figures: schedule families at fixed budgets, the collapse probability against the
similarity variable at several dimensions, and predicted against measured probabilities on
other targets.

Each ``plot_*`` function takes the tables of :mod:`annealvi_lib.experiments.ch5_archive`;
the ``@register``-ed functions draw the book's figures.
"""

from __future__ import annotations

import numpy as np

from ..config import Preset
from ..experiments.ch5_archive import load_design
from ..experiments.ch5_schedule_design import BEST_THEORY, THEORIES
from ..theory import collapse as C
from .registry import register
from .style import SCHEDULE_LABELS, SCHEDULE_STYLES

__all__ = ["family_label", "plot_families", "plot_similarity", "plot_targets"]


_FAMILY_LABEL_EXTRA = {"hold at beta_c": r"hold at $0.98\,\beta_c$ (closed form's best)"}


def family_label(name: str, short: bool = False) -> str:
    """Reader-facing name of a family (or of the closed form's best schedule; ``short`` drops
    its parenthesis)."""
    if short and name == "hold at beta_c":
        return r"hold at $0.98\,\beta_c$"
    return _FAMILY_LABEL_EXTRA.get(name, SCHEDULE_LABELS.get(name, name))


def plot_families(scan: list[dict], rows: list[dict], beta_c: float, R: float):
    """One panel per budget: the finite-batch prediction against ``beta_i R^2`` for each family
    (lines), the Monte Carlo at each family's predicted optimum (markers with Wilson 95 % bars)
    and at the closed form's best schedule (black square); dotted line: beta_c."""
    import matplotlib.pyplot as plt

    budgets = list(dict.fromkeys(r["t0"] for r in rows))
    fig, axs = plt.subplots(1, len(budgets), figsize=(3.3 * len(budgets) + 0.4, 3.8),
                            sharey=True, squeeze=False)
    for ax, t0 in zip(axs[0], budgets):
        for fam in dict.fromkeys(r["family"] for r in scan):
            sty = SCHEDULE_STYLES[fam]
            rs = sorted((r for r in scan if r["family"] == fam and r["t0"] == t0),
                        key=lambda r: r["beta_i"])
            x = np.array([r["beta_i"] * R**2 for r in rs])
            ax.plot(x, [r[BEST_THEORY] for r in rs], color=sty["color"], ls=sty["ls"], lw=1.4,
                    label=family_label(fam))
        for r in (q for q in rows if q["t0"] == t0):
            hold = r["family"] == "hold at beta_c"
            color = "black" if hold else SCHEDULE_STYLES[r["family"]]["color"]
            err = [[max(r["p_mc"] - r["ci_low"], 0)], [max(r["ci_high"] - r["p_mc"], 0)]]
            # the hold square is open and larger, so a family's circle at nearly the same
            # start stays visible inside it
            ax.errorbar([r["beta_i"] * R**2], [r["p_mc"]], yerr=err, color=color,
                        marker="s" if hold else "o", ms=10 if hold else 6, capsize=3, ls="none",
                        mfc="none" if hold else color, mew=1.5 if hold else 1.0,
                        label=(family_label(r["family"], short=True) + ", closed form's best (MC)"
                               if hold else None))
        ax.axvline(beta_c * R**2, color="0.4", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_title(f"budget $t_0$ = {t0:.0f} steps", fontsize=10)
        ax.set_xlabel(r"$\beta_i R^2$")
        ax.set_ylim(-0.02, 1.02)
    axs[0, 0].set_ylabel("P(collapse)")
    h, lab = axs[0, 0].get_legend_handles_labels()
    fig.legend(h, lab, loc="upper center", ncol=3, fontsize=9, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.84))
    return fig


def plot_similarity(rows: list[dict]):
    """Monte-Carlo collapse probability against the closed form's similarity variable (left: the
    paper's ``sqrt(d) eps e^{-I}``; right: the corrected ``sqrt(d/2) eps e^{-I_lag}``), one
    marker per dimension, Wilson 95 % bars; the curve ``erf(x)`` is what the closed form
    predicts; open markers: no annealing."""
    import matplotlib.pyplot as plt
    from scipy.special import erf

    dims = sorted({int(r["d"]) for r in rows})
    markers = "osD^vP*"
    fig, axs = plt.subplots(1, 2, figsize=(8.4, 3.9), sharey=True)
    for ax, col, title in ((axs[0], "x", r"paper: $x=\sqrt{d}\,\varepsilon\,e^{-I}$"),
                           (axs[1], "x_corrected",
                            r"corrected: $x=\sqrt{d/2}\,\varepsilon\,e^{-I_{\rm lag}}$")):
        xs = np.array([r[col] for r in rows])
        grid = np.geomspace(max(xs.min() / 2, 1e-3), xs.max() * 2, 200)
        ax.plot(grid, erf(grid), color="0.3", lw=1.2, label=r"$\mathrm{erf}(x)$")
        for i, d in enumerate(dims):
            for van in (False, True):
                rs = [r for r in rows if int(r["d"]) == d and (r["schedule"] == "constant") == van]
                if not rs:
                    continue
                p = np.array([r["p_mc"] for r in rs])
                err = np.clip([p - [r["ci_low"] for r in rs], [r["ci_high"] for r in rs] - p],
                              0, None)
                ax.errorbar([r[col] for r in rs], p, yerr=err, ls="none",
                            marker=markers[i % len(markers)], color=f"C{i}", ms=5, capsize=2,
                            mfc="white" if van else f"C{i}",
                            label=None if van else f"$d$ = {d}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("$x$")
        ax.set_ylim(-0.02, 1.02)
    axs[0].set_ylabel("P(collapse), Monte Carlo")
    from matplotlib.lines import Line2D
    h, lab = axs[0].get_legend_handles_labels()
    h.append(Line2D([], [], color="0.3", marker="o", mfc="white", ls="none"))
    lab.append("open: no annealing")
    fig.legend(h, lab, loc="upper center", ncol=min(len(lab), 4), fontsize=9,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.84))
    return fig


def plot_targets(rows: list[dict], theories=THEORIES):
    """Predicted against measured collapse probability on the other targets, one panel per
    theory (colour: R, marker: w_star; horizontal bars: Wilson 95 % of the Monte Carlo)."""
    import matplotlib.pyplot as plt

    Rs = sorted({r["R"] for r in rows})
    ws = sorted({r["w_star"] for r in rows})
    markers = "osD^v"
    fig, axs = plt.subplots(1, len(theories), figsize=(2.6 * len(theories) + 0.4, 3.5),
                            sharey=True, squeeze=False)
    for ax, th in zip(axs[0], theories):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1)
        for r in rows:
            i, j = Rs.index(r["R"]), ws.index(r["w_star"])
            ax.errorbar([r["p_mc"]], [r[th]], xerr=[[r["p_mc"] - r["ci_low"]],
                                                    [r["ci_high"] - r["p_mc"]]],
                        color=f"C{i}", marker=markers[j % len(markers)], ms=5, capsize=2,
                        ls="none", mfc="white" if r["schedule"] == "constant" else f"C{i}")
        ax.set_title(th, fontsize=10)
        ax.set_xlabel("Monte Carlo")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_aspect("equal")
    axs[0, 0].set_ylabel("predicted")
    from matplotlib.lines import Line2D
    handles = ([Line2D([], [], color=f"C{i}", marker="o", ls="none", label=f"$R$ = {R:g}")
                for i, R in enumerate(Rs)]
               + [Line2D([], [], color="0.3", marker=markers[j % len(markers)], ls="none",
                         label=f"$w^*$ = {w:g}") for j, w in enumerate(ws)])
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=9,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return fig


def _tables(preset):
    return load_design(preset.design)[0]


@register("ch5_families", chapter=5,
          description="schedule families at fixed budgets: predicted and measured P(collapse)")
def fig_families(preset: Preset):
    cfg = preset.design
    t = _tables(preset)
    p = cfg.problem
    return plot_families(t["scan.csv"], t["families.csv"],
                         C.derived_alpha(p.R, p.w_star) / p.R**2, p.R)


@register("ch5_similarity", chapter=5,
          description="P(collapse) against the similarity variable at several dimensions")
def fig_similarity(preset: Preset):
    return plot_similarity(_tables(preset)["dimensions.csv"])


@register("ch5_targets", chapter=5,
          description="predicted against measured P(collapse) on other targets (R, w*)")
def fig_targets(preset: Preset):
    return plot_targets(_tables(preset)["targets.csv"])
