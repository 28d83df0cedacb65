"""Chapter 1's opening experiment: vanilla VI, vanilla VI from a covering init, annealed VI.

Paper protocol (DESIGN 3 and issue 2): d = 128, R = 3, w* = 0.8; vanilla runs use beta = 1 from
sigma^2(0) = 1 ("standard") or sigma^2(0) = 10 R^2 ("covering"); the annealed run uses the
exponential schedule from beta_i = 1/(10 R^2) with t0 = 700 for 800 steps and
sigma^2(0) = 1/beta_i. The paper stops the vanilla runs after 100 steps; the book runs them for
``DemoConfig.n_iter_vanilla`` steps (400) because at 100 the covering arm has not decided yet
(:func:`outcome_counts` reports both times). Every run is repeated over ``n_seeds`` seeds
(vmapped) so that the chapter can report collapse frequencies, not anecdotes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import matplotlib.pyplot as plt
from scipy.stats import norm

from .. import __version__
from ..cache import load_npz, save_npz_atomic, source_hash
from ..figures.collapse_plots import SETTLED_S
from ..config import DemoConfig
from ..figures.style import SCHEDULE_LABELS, SCHEDULE_STYLES
from ..models.schedules import SCHEDULES, Schedule
from ..models.student import Hyper, Trajectory, classify_collapse, seed_keys, simulate_seeds
from ..models.targets import make_target

__all__ = ["OpeningRun", "run_opening_experiment", "opening_n_seeds", "opening_cache_path",
           "cached_opening_experiment", "marginal_along_mu_star", "student_marginal",
           "plot_tempered_marginals", "plot_schedules", "plot_opening_marginals", "plot_variances",
           "representative_seeds", "plot_final_overlaps", "outcome_counts", "SETTLED_S",
           "PAPER_VANILLA_STEPS"]

ARMS = ("vanilla", "covering", "annealed")

#: Length of the paper's vanilla runs (its opening figure).
PAPER_VANILLA_STEPS = 100


class OpeningRun(NamedTuple):
    """One arm of the opening experiment: its label, schedule and trajectories (seeds x steps)."""

    label: str
    schedule: Schedule
    var0: float
    traj: Trajectory   # arrays of shape (n_seeds, n_iter + 1), as NumPy
    collapsed: np.ndarray
    failed: np.ndarray


def run_opening_experiment(cfg: DemoConfig, n_seeds: int = 16) -> dict[str, OpeningRun]:
    """Run the three arms over ``n_seeds`` seeds each (same initial means across arms).

    Returns a dict with keys ``vanilla``, ``covering``, ``annealed``.
    """
    p = cfg.problem
    target = make_target(p.d, p.R, p.w_star)
    hyper = Hyper(lr=p.lr, batch=p.batch, sampling=p.sampling)
    init_keys, noise_keys = seed_keys(cfg.seed, n_seeds)
    out = {}
    for name, (label, sched, n_iter, var0) in _arm_specs(cfg).items():
        _, traj = simulate_seeds(init_keys, noise_keys, target, sched, n_iter, hyper, var0=var0)
        traj = Trajectory(*(np.asarray(a) for a in traj))
        collapsed, failed = classify_collapse(traj.s[:, -1])
        out[name] = OpeningRun(label, sched, var0, traj, np.asarray(collapsed), np.asarray(failed))
    return out


def _arm_specs(cfg: DemoConfig) -> dict[str, tuple[str, Schedule, int, float]]:
    """(label, schedule, n_iter, initial variance) of each arm."""
    p = cfg.problem
    return {
        "vanilla": ("vanilla VI, $\\sigma^2(0)=1$", Schedule("constant", 1.0, 1.0),
                    cfg.n_iter_vanilla, 1.0),
        "covering": (f"vanilla VI, $\\sigma^2(0)={cfg.covering_var_factor:g}R^2$",
                     Schedule("constant", 1.0, 1.0), cfg.n_iter_vanilla,
                     cfg.covering_var_factor * p.R**2),
        "annealed": (f"annealed VI, $\\beta_i=1/({cfg.beta_i_factor:g}R^2)$, $t_0={cfg.t0:g}$",
                     Schedule("exp", cfg.beta_i, cfg.t0), cfg.n_iter_annealed,
                     1.0 / cfg.beta_i),
    }


def opening_n_seeds(preset_name: str) -> int:
    """Seeds per arm used by the book for a preset: 4 at ``quick``, 16 otherwise."""
    return 4 if preset_name == "quick" else 16


def _source_digest() -> str:
    """Hash of the modules the opening experiment depends on (so a code change, not only a
    version bump, invalidates the cache)."""
    return source_hash("experiments/ch1_mode_collapse.py", "models/student.py", "models/targets.py",
                       "models/schedules.py", "config.py")


def opening_cache_path(cfg: DemoConfig, n_seeds: int, cache: str | os.PathLike | None = None) -> Path:
    """Cache file of the opening experiment: ``<cache>/opening/<hash>.npz``.

    The hash covers the full :class:`DemoConfig`, ``n_seeds``, the library version and the
    source of the modules the experiment uses. ``cache`` defaults to
    :func:`annealvi_lib.paths.cache_dir` (``$ANNEALVI_CACHE`` or ``<repo>/results``).
    """
    from ..paths import cache_dir

    payload = json.dumps({"cfg": dataclasses.asdict(cfg), "n_seeds": int(n_seeds),
                          "version": __version__, "source": _source_digest()},
                         sort_keys=True, default=str)
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return cache_dir(cache) / "opening" / f"{key}.npz"


def _save_runs(path: Path, runs: dict[str, OpeningRun]) -> None:
    """Atomic npz write (temporary file in the same folder + rename)."""
    data = {}
    for name, run in runs.items():
        for field, arr in zip(Trajectory._fields, run.traj):
            data[f"{name}.traj.{field}"] = np.asarray(arr)
        data[f"{name}.collapsed"] = np.asarray(run.collapsed)
        data[f"{name}.failed"] = np.asarray(run.failed)
    save_npz_atomic(path, data)


def _load_runs(path: Path, cfg: DemoConfig, n_seeds: int) -> dict[str, OpeningRun] | None:
    """Load cached runs; ``None`` if missing, unreadable or of the wrong shape (then redone)."""
    data = load_npz(path)
    if data is None:
        return None
    try:
        meta = _arm_specs(cfg)
        runs = {}
        for name in ARMS:
            traj = Trajectory(*(data[f"{name}.traj.{f}"] for f in Trajectory._fields))
            label, sched, n_iter, var0 = meta[name]
            if any(a.shape != (n_seeds, n_iter + 1) for a in traj):
                return None
            runs[name] = OpeningRun(label, sched, var0, traj, data[f"{name}.collapsed"],
                                    data[f"{name}.failed"])
        return runs
    except Exception:
        return None


def cached_opening_experiment(cfg: DemoConfig, n_seeds: int = 16,
                              cache: str | os.PathLike | None = None,
                              refresh: bool = False) -> dict[str, OpeningRun]:
    """:func:`run_opening_experiment`, cached on disk (see :func:`opening_cache_path`).

    A missing, corrupt or inconsistent cache file is recomputed; ``refresh=True`` always
    recomputes. The notebook and the ``figures`` CLI share this cache.
    """
    path = opening_cache_path(cfg, n_seeds, cache)
    runs = None if refresh else _load_runs(path, cfg, n_seeds)
    if runs is None:
        runs = run_opening_experiment(cfg, n_seeds=n_seeds)
        _save_runs(path, runs)
    return runs


def marginal_along_mu_star(y, R: float, w_star: float, beta: float = 1.0):
    """Density of ``<mu*, x>`` under the tempered target pi_beta (normalised numerically on ``y``).

    The projection of pi_beta on mu* is proportional to ``p1(y)^beta`` with
    ``p1 = w* N(R, 1) + (1-w*) N(-R, 1)`` (the orthogonal part factorises).
    """
    y = np.asarray(y, dtype=float)
    p1 = w_star * norm.pdf(y, R, 1.0) + (1 - w_star) * norm.pdf(y, -R, 1.0)
    dens = p1**beta
    return dens / np.trapezoid(dens, y)


def student_marginal(y, R: float, m1, m2, var1, var2):
    """Exact density of ``<mu*, x>`` under the student: ``1/2 N(R m1, var1) + 1/2 N(R m2, var2)``."""
    y = np.asarray(y, dtype=float)
    return 0.5 * norm.pdf(y, R * m1, np.sqrt(var1)) + 0.5 * norm.pdf(y, R * m2, np.sqrt(var2))


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


def representative_seeds(runs: dict[str, OpeningRun]) -> dict[str, int]:
    """For each arm, the run whose final overlap ``s`` is the arm's median (lower median for an
    even count; failed runs excluded): a typical run, chosen by a criterion, not by hand."""
    out = {}
    for name, run in runs.items():
        s = np.asarray(run.traj.s[:, -1], dtype=float)
        ok = np.flatnonzero(~np.asarray(run.failed, bool))
        if ok.size == 0:
            raise ValueError(f"arm {name!r} has no finished run to show")
        order = ok[np.argsort(s[ok], kind="stable")]
        out[name] = int(order[(order.size - 1) // 2])
    return out


def outcome_counts(run: OpeningRun, step: int = -1) -> dict[str, int]:
    """Outcome of every run of one arm at ``step`` (default: the end): ``collapsed`` (s >= 0.9),
    ``covered`` (s <= -0.9), ``undecided`` (|s| < 0.9, see :data:`SETTLED_S`), ``failed`` (not
    finite), and ``sign_collapsed`` (s > 0, the classification used everywhere else; it counts
    undecided runs by the sign they happen to have)."""
    s = np.asarray(run.traj.s[:, step], dtype=float)
    ok = np.isfinite(s)
    kinds = _outcome_kinds(s[ok])
    return {**{k: int((kinds == k).sum()) for k in ("collapsed", "covered", "undecided")},
            "failed": int((~ok).sum()), "sign_collapsed": int((s[ok] > 0).sum()),
            "n": int(ok.sum())}


def _outcome_kinds(s) -> np.ndarray:
    """``"collapsed"`` (s >= SETTLED_S), ``"covered"`` (s <= -SETTLED_S) or ``"undecided"`` per
    finite final overlap."""
    s = np.asarray(s, dtype=float)
    return np.where(s >= SETTLED_S, "collapsed", np.where(s <= -SETTLED_S, "covered", "undecided"))


def plot_final_overlaps(runs: dict[str, OpeningRun], shown: dict[str, int] | None = None):
    """Final overlap ``s`` of every run of every arm (a seaborn swarm: one dot per run, laid out
    deterministically), coloured by outcome (collapsed, both modes covered, or still undecided:
    :data:`SETTLED_S`), with the collapse threshold ``s = 0`` and each arm's counts; ``shown``
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
