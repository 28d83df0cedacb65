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
from scipy.stats import norm

from .. import __version__
from ..cache import load_npz, save_npz_atomic, source_hash
from ..metrics import SETTLED_S
from ..config import DemoConfig
from ..models.schedules import Schedule
from ..models.student import Hyper, Trajectory, classify_collapse, seed_keys, simulate_seeds
from ..models.targets import make_target

__all__ = ["OpeningRun", "run_opening_experiment", "opening_n_seeds", "opening_cache_path",
           "cached_opening_experiment", "marginal_along_mu_star", "student_marginal",
           "representative_seeds", "outcome_counts", "SETTLED_S",
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
                       "models/schedules.py", "config.py", "_rng.py")


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
    ``covered`` (s <= -0.9), ``undecided`` (|s| < 0.9, see :data:`annealvi_lib.metrics.SETTLED_S`), ``failed`` (not
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


