"""Chapter 1's figures: the tempered target, the schedules and the opening experiment
(final overlaps, student marginals over time, variances against 1/beta).

Each ``plot_*`` function takes results of :mod:`annealvi_lib.experiments.ch1_mode_collapse`
and returns a matplotlib figure; the ``@register``-ed functions draw the book's figures for the
``figures`` command.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..config import Preset
from ..experiments.ch1_mode_collapse import (OpeningRun, _outcome_kinds, cached_opening_experiment,
                                             marginal_along_mu_star, opening_n_seeds,
                                             outcome_counts, representative_seeds,
                                             student_marginal)
from ..models.schedules import SCHEDULES, Schedule
from .registry import register
from .style import SCHEDULE_LABELS, SCHEDULE_STYLES

__all__ = ["plot_tempered_marginals", "plot_schedules", "plot_final_overlaps",
           "plot_opening_marginals", "plot_variances"]


def plot_tempered_marginals(R: float, w_star: float, betas=None, ax=None):
    """Marginal of the tempered target along mu* for several inverse temperatures.

    Args:
      R, w_star: target parameters. betas: inverse temperatures in (0, 1] (default
      ``1, 0.3, 0.1, 1/(10 R^2)``). ax: optional axes to draw on.
    Returns the figure.
    """
    if betas is None:
        betas = (1.0, 0.3, 0.1, 1.0 / (10 * R**2))
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    else:
        fig = ax.figure
    y = np.linspace(-R - 9, R + 9, 1201)
    for b in betas:
        ax.plot(y, marginal_along_mu_star(y, R, w_star, b), label=f"$\\beta={b:.3g}$")
    ax.set_xlabel(r"$y=\langle\mu^*,x\rangle$")
    ax.set_ylabel(r"marginal density of $\pi_\beta$")
    ax.legend()
    return fig


def plot_schedules(beta_i: float, t0: float, n_iter: int, ax=None):
    """Plot beta(t) of every schedule for one (beta_i, t0); returns the figure."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    t = np.arange(n_iter + 1)
    for name in SCHEDULES:
        ax.plot(t, np.asarray(Schedule(name, beta_i, t0)(t)), lw=1.8,
                label=SCHEDULE_LABELS.get(name, name), **SCHEDULE_STYLES.get(name, {}))
    ax.set_yscale("log")
    ax.set_xlabel("step $t$")
    ax.set_ylabel(r"inverse temperature $\beta(t)$")
    # t0 as a light band behind the curves (the step schedule jumps exactly there), labelled
    ax.axvline(t0, color="0.6", lw=6, alpha=0.3, zorder=0)
    ax.annotate("$t_0$", xy=(t0, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                textcoords="offset points", ha="center", va="bottom", fontsize=10)
    ax.legend(title=f"$\\beta_i={beta_i:.3g}$, $t_0={t0:g}$", fontsize=9, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_final_overlaps(runs: dict[str, OpeningRun], shown: dict[str, int] | None = None):
    """Final overlap ``s`` of every run of every arm (a seaborn swarm: one dot per run, laid out
    deterministically), coloured by outcome (collapsed, both modes covered, or still undecided:
    :data:`annealvi_lib.metrics.SETTLED_S`), with the collapse threshold ``s = 0`` and each arm's counts; ``shown``
    rings the runs drawn in :func:`plot_opening_marginals`. Returns the figure."""
    import pandas as pd
    import seaborn as sns

    names = list(runs)
    labels = {"covered": "both modes covered ($s\\leq-0.9$)",
              "collapsed": "collapsed ($s\\geq0.9$)",
              "undecided": "undecided ($|s|<0.9$)"}
    rows = []
    for name in names:
        run = runs[name]
        ok = ~np.asarray(run.failed, bool)
        s_ok = np.asarray(run.traj.s[:, -1], dtype=float)[ok]
        rows += [{"arm": name, "s": s_end, "outcome": labels[kind]}
                 for s_end, kind in zip(s_ok, _outcome_kinds(s_ok))]
    df = pd.DataFrame(rows)
    # settled runs pile up at s = +-1: give each arm's swarm the height its largest pile needs
    n_max = max(int((~np.asarray(runs[name].failed, bool)).sum()) for name in names)
    fig, ax = plt.subplots(figsize=(6.6, 1.6 + len(names) * max(0.8, 0.08 * n_max)))
    palette = {labels["covered"]: "#0072B2", labels["collapsed"]: "#D55E00",
               labels["undecided"]: "#7f7f7f"}
    present = [k for k in palette if (df["outcome"] == k).any()]
    sns.swarmplot(data=df, x="s", y="arm", hue="outcome", order=names, palette=palette,
                  hue_order=present, size=3.5, ax=ax)
    for i, name in enumerate(names):
        c = outcome_counts(runs[name])
        text = f"{c['sign_collapsed']}/{c['n']} collapsed"
        if c["undecided"]:
            text += f"\n({c['undecided']} undecided)"
        ax.text(1.02, i, text, va="center", fontsize=9, transform=ax.get_yaxis_transform())
        if shown is not None and name in shown:
            ax.scatter([float(runs[name].traj.s[shown[name], -1])], [i], s=140,
                       facecolors="none", edgecolors="k", lw=1.2, zorder=5,
                       label="run shown above" if i == 0 else None)
    ax.axvline(0.0, color="0.3", lw=1, ls="--")
    ax.set_xlim(-1.08, 1.08)
    ax.set_ylabel("arm")
    ax.set_xlabel(r"final overlap $s=\langle\mu_1,\mu_2\rangle/R^2$")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def plot_opening_marginals(runs: dict[str, OpeningRun], R: float, w_star: float,
                           seed: int | dict[str, int] = 0, n_times: int = 4):
    """Marginal along mu* of target (tempered at the current beta) and student, at ``n_times`` times
    per arm. ``seed``: the run shown, one index for all arms or one per arm (e.g.
    :func:`representative_seeds`). Returns the figure (rows = arms, columns = times)."""
    y = np.linspace(-R - 8, R + 8, 801)
    fig, axes = plt.subplots(len(runs), n_times, figsize=(2.6 * n_times, 2.2 * len(runs)),
                             sharex=True, sharey=True)
    for row, (name, run) in enumerate(runs.items()):
        tr = run.traj
        seed_r = seed[name] if isinstance(seed, dict) else seed
        s_end = float(tr.s[seed_r, -1])
        axes[row, -1].annotate(f"run {seed_r}: final $s={s_end:+.2f}$\n"
                               + ("collapsed" if s_end > 0 else "both modes covered"),
                               xy=(1.02, 0.5), xycoords="axes fraction", va="center",
                               fontsize=9)
        n = tr.s.shape[1] - 1
        times = np.unique(np.round(np.linspace(0, n, n_times)).astype(int))
        for col, t in enumerate(times):
            ax = axes[row, col]
            beta = float(tr.beta[seed_r, t])
            ax.fill_between(y, marginal_along_mu_star(y, R, w_star, 1.0), color="0.85",
                            label=r"target $\pi$")
            if beta < 1:
                ax.plot(y, marginal_along_mu_star(y, R, w_star, beta), "k--", lw=1,
                        label=r"tempered $\pi_\beta$")
            ax.plot(y, student_marginal(y, R, tr.m1[seed_r, t], tr.m2[seed_r, t],
                                        tr.var1[seed_r, t], tr.var2[seed_r, t]), lw=1.6,
                    label="student $q$")
            ax.set_title(f"$t={t}$, $\\beta={beta:.2g}$", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{name}\ndensity")
            if row == len(runs) - 1:
                ax.set_xlabel(r"$\langle \mu^*, x\rangle$")
    by_label = {}                           # every series once, in one legend below the panels
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            by_label.setdefault(label, handle)
    fig.tight_layout(rect=(0, 0.06, 0.86, 1))
    fig.legend(list(by_label.values()), list(by_label), loc="lower center", ncol=3, fontsize=9,
               frameon=False)
    return fig


def plot_variances(run: OpeningRun):
    """Variance dynamics of the annealed arm (all seeds, both components pooled: with equal
    weights they are exchangeable). Top: sigma_k^2 against the equilibrium 1/beta on a log
    scale. Bottom: the relative lag beta sigma_k^2 - 1 on a linear scale, where the gap that
    the log axis hides is visible. Median and 5-95% band over seeds and components."""
    tr = run.traj
    t = np.arange(tr.s.shape[1])
    pooled = np.concatenate([tr.var1, tr.var2], axis=0)            # (2 n_seeds, n_iter + 1)
    rel = pooled * np.concatenate([tr.beta, tr.beta], axis=0) - 1.0
    fig, (top, bot) = plt.subplots(2, 1, figsize=(6, 5.2), sharex=True,
                                   gridspec_kw=dict(height_ratios=(1.3, 1)))
    lo, med, hi = np.percentile(pooled, [5, 50, 95], axis=0)
    top.fill_between(t, lo, hi, color="#0072B2", alpha=0.3, lw=0,
                     label=r"$\sigma_k^2$, 5-95% band")
    top.plot(t, med, color="#0072B2", lw=1.8, label=r"$\sigma_k^2$, median")
    top.plot(t, 1.0 / tr.beta[0], color="k", ls="--", lw=1.2,
             label=r"equilibrium $1/\beta(t)$")
    top.set_yscale("log")
    top.set_ylabel(r"variance $\sigma_k^2$")
    top.legend(fontsize=9, loc="upper right")
    lo, med, hi = np.percentile(rel, [5, 50, 95], axis=0)
    bot.fill_between(t, lo, hi, color="#D55E00", alpha=0.3, lw=0, label="5-95% band")
    bot.plot(t, med, color="#D55E00", lw=1.8, label="median")
    bot.axhline(0.0, color="k", ls="--", lw=1.2, label="no lag")
    bot.set_ylabel(r"lag $\beta\sigma_k^2-1$")
    bot.set_xlabel("step $t$")
    bot.legend(fontsize=9, loc="lower center", ncol=3)      # the lag plateaus above it
    fig.tight_layout()
    return fig


def _opening_runs(preset: Preset):
    return cached_opening_experiment(preset.demo, n_seeds=opening_n_seeds(preset.name))


@register("ch1_tempered_marginals", chapter=1,
          description="marginal of the tempered target along mu* for several beta")
def _ch1_tempered_marginals(preset: Preset):
    p = preset.demo.problem
    return plot_tempered_marginals(p.R, p.w_star)


@register("ch1_schedules", chapter=1, description="beta(t) of the five annealing schedules")
def _ch1_schedules(preset: Preset):
    cfg = preset.demo
    return plot_schedules(cfg.beta_i, cfg.t0, cfg.n_iter_annealed)


@register("ch1_opening_marginals", chapter=1,
          description="opening experiment: target and student marginals along mu* over time")
def _ch1_opening_marginals(preset: Preset):
    p = preset.demo.problem
    runs = _opening_runs(preset)
    return plot_opening_marginals(runs, p.R, p.w_star, seed=representative_seeds(runs))


@register("ch1_final_overlaps", chapter=1,
          description="opening experiment: final overlap s of every run of each arm")
def _ch1_final_overlaps(preset: Preset):
    runs = _opening_runs(preset)
    return plot_final_overlaps(runs, representative_seeds(runs))


@register("ch1_variances", chapter=1,
          description="annealed arm: variances against the equilibrium 1/beta(t)")
def _ch1_variances(preset: Preset):
    return plot_variances(_opening_runs(preset)["annealed"])
