"""Chapter 5: designing an annealing schedule -- schedule families at a fixed budget, the
dimension and target scaling of the collapse probability, and a recommender checked by Monte Carlo.

Four theories predict the collapse probability of a GMM-student run (chapter 3):

* ``closed form``: the paper's ``erf(sqrt(d) eps e^{-I})`` with its alpha = 0.608;
* ``closed form, corrected``: with the sqrt(2) growth of the antipodal phase, the rotation rate on
  the lagging variance and the derived alpha (nothing fitted);
* ``ODE-propagated``: the expected JKO map from exact initial draws;
* ``finite-batch``: the same map with the Monte-Carlo gradient noise (chapter 3's best theory).

The closed form's best schedule for a budget. Only the steps with beta(t) < beta_c count, each
with weight ``sqrt(beta(t))``, so for any schedule that reaches 1 at ``t0``

    I = (R / sqrt(2 pi)) lr sum_{t < t0, beta_t < beta_c} sqrt(beta_t) <= (R / sqrt(2 pi)) lr t0 sqrt(beta_c),

with equality for beta_t = beta_c^- throughout: the *step* schedule held just below beta_c
(:func:`closed_form_bound`). The better theories move the hold level below beta_c (the pair tilts
toward the heavy mode as beta approaches beta_c, and the entropy coupling that makes the pair
antipodal weakens); :func:`theory_scan` finds it for each family.

The Monte Carlo runs the reduced sampler through :func:`annealvi_lib.experiments.grid.run_grid` (cached per
cell, keys from (master seed, schedule, beta_i, t0, replicate)). The full study costs about 20
minutes on 2 cores, so the book reads it from ``data/schedule_design``
(``python -m annealvi_lib design-archive``) when the configuration matches, else computes it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import numpy as np

from ..theory import collapse as C
from .._validate import (check_choice, check_int_at_least, check_open_unit, check_positive)
from ..config import DesignConfig, GMMGridConfig, Problem, grid_beta
from .grid import run_grid
from ..metrics import difference_interval

__all__ = ["THEORIES", "BEST_THEORY", "HOLD_FRACTION", "predict", "closed_form_bound",
           "theory_scan", "optimal_points", "mc_points", "family_table", "family_ranking",
           "theory_ranking", "similarity", "isotonic", "collapse_fit", "collapse_test", "direct_exponent", "dimension_table",
           "target_table", "validity", "Recommendation", "recommend", "verify",
           "recommend_table", "DESIGN_ARCHIVE", "design_config", "run_design",
           "write_design_archive", "load_design"]

#: theories in reading order; the last is chapter 3's best (the recommender uses it)
THEORIES = ("closed form", "closed form, corrected", "ODE-propagated", "finite-batch")
BEST_THEORY = "finite-batch"
#: the closed form's best schedule holds beta at this fraction of beta_c (just below it)
HOLD_FRACTION = 0.98
#: a theory "holds" on a target when every cell is within this many standard errors
VALID_Z = 3.0


def _key(seed: int, *tag: int) -> jax.Array:
    k = jax.random.key(int(seed))
    for t in tag:
        k = jax.random.fold_in(k, int(t))
    return k


# --------------------------------------------------------------------------------------------
# theories
# --------------------------------------------------------------------------------------------

def predict(problem: Problem, schedule: str, beta_i, t0, *, n_iter_extra: int, n_samples: int,
            key: jax.Array, theories=THEORIES, n_iter=None) -> dict[str, np.ndarray]:
    """Collapse probability of every theory on cells ``(beta_i, t0)`` (broadcast arrays).

    Args:
      problem: target and optimiser (d, R, w_star, lr, batch, sampling).
      schedule: a family of :data:`annealvi_lib.models.schedules.SCHEDULES`; ``constant`` is the
        no-annealing row (beta_i must be 1; the closed forms are then ``erf(sqrt(d) eps)``, the
        paper's, and ``Phi(x)^2 + Phi(-x)^2``, chapter 3's independent-means formula).
      n_iter_extra: steps after t0 (runs last ``ceil(t0) + n_iter_extra`` steps unless
        ``n_iter`` is given). n_samples: simulated runs per cell of the propagated theories.
      key: PRNG key of the propagated theories (the same draws for every cell).
    Returns:
      ``{theory: P}`` plus ``"finite-batch se"`` and ``"finite-batch undecided"`` (fraction of
      its runs with final ``|s| < 0.9``, not settled) when the finite-batch theory is included.
    """
    b, t = np.broadcast_arrays(np.asarray(beta_i, float), np.asarray(t0, float))
    kw = dict(d=problem.d, R=problem.R, w_star=problem.w_star, lr=problem.lr)
    out = {}
    if schedule == "constant":
        if np.any(b != 1.0):
            raise ValueError("beta_i must be 1 for the constant schedule")
        eps = C.collapse_epsilon(problem.R, problem.w_star)
        if "closed form" in theories:
            out["closed form"] = np.full(b.shape, math.erf(math.sqrt(problem.d) * eps))
        if "closed form, corrected" in theories:
            out["closed form, corrected"] = np.full(
                b.shape, C.vanilla_probability(d=problem.d, R=problem.R, w_star=problem.w_star))
    else:
        if "closed form" in theories:
            out["closed form"] = C.collapse_probability(b, t, alpha=C.PAPER_ALPHA,
                                                        schedule=schedule, **kw)
        if "closed form, corrected" in theories:
            out["closed form, corrected"] = C.collapse_probability(
                b, t, growth=math.sqrt(2.0), variance_lag=True, schedule=schedule, **kw)
    prop = dict(key=key, n_extra=n_iter_extra, n_samples=n_samples, schedule=schedule,
                n_iter=n_iter, **kw)
    if "ODE-propagated" in theories:
        out["ODE-propagated"] = C.ode_collapse_probability(b, t, **prop).p
    if "finite-batch" in theories:
        st = C.stochastic_collapse_probability(b, t, batch=problem.batch,
                                               sampling=problem.sampling, **prop)
        out["finite-batch"], out["finite-batch se"] = st.p, st.se
        out["finite-batch undecided"] = st.undecided
    return {k: np.asarray(v, float) for k, v in out.items()}


def closed_form_bound(problem: Problem, t0, alpha: float | None = None):
    """The largest amplification exponent any schedule reaching 1 at ``t0`` can have in the
    closed form, ``(R / sqrt(2 pi)) lr t0 sqrt(beta_c)`` (hold just below beta_c), and the
    probability ``erf(sqrt(d) eps e^{-I})`` it gives. Returns ``(I_max, P_min)``."""
    alpha = C.derived_alpha(problem.R, problem.w_star) if alpha is None else alpha
    beta_c = min(alpha / problem.R**2, 1.0)
    I = problem.R / math.sqrt(2 * math.pi) * problem.lr * np.asarray(t0, float) * math.sqrt(beta_c)
    eps = C.collapse_epsilon(problem.R, problem.w_star)
    from scipy.special import erf
    return I, erf(math.sqrt(problem.d) * eps * np.exp(-I))


def direct_exponent(problem: Problem, schedule: str, beta_i: float, t0: float,
                    alpha: float | None = None) -> float:
    """The amplification exponent summed step by step from the schedule function itself,
    ``(R / sqrt(2 pi)) lr sum_{t < t0, beta_t < beta_c} sqrt(beta_t)``: an independent check of
    the closed-form integrals of :func:`annealvi_lib.theory.collapse.annealing_exponent` (equal up to
    the O(1/t0) difference between a sum and an integral)."""
    from ..models.schedules import SCHEDULES

    alpha = C.derived_alpha(problem.R, problem.w_star) if alpha is None else alpha
    beta_c = alpha / problem.R**2
    t = np.arange(int(math.ceil(t0)))
    b = np.asarray(SCHEDULES[schedule](t, beta_i=beta_i, t0=t0), float)
    return float(problem.R / math.sqrt(2 * math.pi) * problem.lr * np.sum(np.sqrt(b[b < beta_c])))


def theory_scan(cfg: DesignConfig, key_tag: int = 0) -> list[dict]:
    """Every theory on every (family, budget, scanned beta_i): one row each, with
    ``log10_beta_r2``, ``beta_i``, ``t0``, ``family`` and one column per theory."""
    p = cfg.problem
    betas = np.array([grid_beta(k, p.R**2) for k in cfg.log10_beta_scan])
    B, T = np.meshgrid(betas, np.array(cfg.budgets), indexing="ij")
    rows = []
    for fam in cfg.families:
        P = predict(p, fam, B, T, n_iter_extra=cfg.n_iter_extra, n_samples=cfg.theory_samples,
                    key=_key(cfg.seed, 1, key_tag))
        for i, k in enumerate(cfg.log10_beta_scan):
            for j, t0 in enumerate(cfg.budgets):
                rows.append({"family": fam, "log10_beta_r2": float(k), "beta_i": float(B[i, j]),
                             "t0": float(t0), **{n: float(v[i, j]) for n, v in P.items()}})
    return rows


def optimal_points(scan: list[dict], theory: str = BEST_THEORY) -> list[dict]:
    """For each (family, budget) the scanned beta_i with the smallest predicted probability of
    ``theory`` (ties: the colder start, i.e. the larger beta_i, the cheaper schedule)."""
    out = []
    for fam in dict.fromkeys(r["family"] for r in scan):
        for t0 in dict.fromkeys(r["t0"] for r in scan):
            rows = [r for r in scan if r["family"] == fam and r["t0"] == t0]
            best = min(rows, key=lambda r: (r[theory], -r["beta_i"]))
            out.append({"family": fam, "t0": t0, "beta_i": best["beta_i"],
                        "log10_beta_r2": best["log10_beta_r2"]})
    return out


# --------------------------------------------------------------------------------------------
# Monte Carlo
# --------------------------------------------------------------------------------------------

def mc_points(problem: Problem, schedule: str, cells, *, n_seeds: int, n_iter_extra: int,
              seed: int = 0, workers: int = 1, cache=None, progress: bool | None = None):
    """Monte Carlo (reduced sampler) of the cells ``[(beta_i, t0), ...]`` under one schedule
    family: one summary row per cell (``n_runs``, ``n_collapsed``, ``n_failed``, ``p_collapse``,
    ``ci_low``, ``ci_high`` and ``n_undecided``: finished runs whose final ``|s| <``
    :data:`~annealvi_lib.figures.collapse_plots.SETTLED_S`, not yet settled), in the order of ``cells``."""
    from ..figures.collapse_plots import SETTLED_S

    cfg = GMMGridConfig(problem=problem, log10_beta_r2=(0.0,), t0s=(100.0,), n_seeds=n_seeds,
                        n_iter_extra=n_iter_extra, schedule=schedule, seed=seed,
                        validation_cells=((0.0, 100.0),), sensitivity_cells=((0.0, 100.0),))
    cells = [(float(b), float(t)) for b, t in cells]
    res = run_grid("gmm", cfg, cells=cells, workers=workers, cache=cache, progress=progress)
    out = []
    for row in res.summary:
        runs = [r for r in res.runs if (r["beta_i"], r["t0"]) == (row["beta_i"], row["t0"])]
        und = sum(1 for r in runs if not r["failed"] and abs(r["s"]) < SETTLED_S)
        out.append({**row, "n_undecided": und})
    return out


def _mc_fields(row: dict) -> dict:
    n = int(row["n_runs"]) - int(row["n_failed"])
    return {"n_runs": int(row["n_runs"]), "n_failed": int(row["n_failed"]),
            "k": int(row["n_collapsed"]), "n": n, "p_mc": float(row["p_collapse"]),
            "ci_low": float(row["ci_low"]), "ci_high": float(row["ci_high"]),
            "undecided": int(row["n_undecided"]) / max(n, 1)}


def family_table(cfg: DesignConfig, scan: list[dict], workers: int = 1, cache=None,
                 progress: bool | None = None) -> list[dict]:
    """Monte Carlo (``cfg.family_seeds`` runs) and every theory at each family's
    finite-batch-optimal beta_i for each budget, plus the closed form's best schedule (step held
    at :data:`HOLD_FRACTION` beta_c, family label ``hold at beta_c``)."""
    p = cfg.problem
    pts = optimal_points(scan)
    beta_c = C.derived_alpha(p.R, p.w_star) / p.R**2
    hold = HOLD_FRACTION * min(beta_c, 1.0)
    for t0 in cfg.budgets:
        pts.append({"family": "hold at beta_c", "t0": float(t0), "beta_i": hold,
                    "log10_beta_r2": math.log10(hold * p.R**2)})
    rows = []
    for fam in dict.fromkeys(q["family"] for q in pts):
        sched = "step" if fam == "hold at beta_c" else fam
        mine = [q for q in pts if q["family"] == fam]
        cells = [(q["beta_i"], q["t0"]) for q in mine]
        mc = mc_points(p, sched, cells, n_seeds=cfg.family_seeds, n_iter_extra=cfg.n_iter_extra,
                       seed=cfg.seed, workers=workers, cache=cache, progress=progress)
        P = predict(p, sched, np.array([c[0] for c in cells]), np.array([c[1] for c in cells]),
                    n_iter_extra=cfg.n_iter_extra, n_samples=cfg.theory_samples,
                    key=_key(cfg.seed, 2))
        for i, q in enumerate(mine):
            rows.append({**q, "schedule": sched, **_mc_fields(mc[i]),
                         **{n: float(v[i]) for n, v in P.items()}})
    return rows


def family_ranking(rows: list[dict]) -> list[dict]:
    """Per budget: the family with the lowest measured probability and, for every other family,
    the difference to it with its Newcombe 95 % interval; ``tied`` when the interval contains 0."""
    out = []
    for t0 in dict.fromkeys(r["t0"] for r in rows):
        rs = [r for r in rows if r["t0"] == t0]
        best = min(rs, key=lambda r: r["p_mc"])
        for r in rs:
            d, lo, hi = difference_interval(r["k"], r["n"], best["k"], best["n"])
            out.append({"t0": t0, "family": r["family"], "best": best["family"],
                        "p_mc": r["p_mc"], "diff": float(d), "diff_lo": float(lo),
                        "diff_hi": float(hi),
                        "tied": bool(r is best or lo <= 0.0)})
    return out


def theory_ranking(rows: list[dict], theories=THEORIES) -> list[dict]:
    """For each theory: over all pairs of points of one budget whose Monte-Carlo difference is
    significant (Newcombe interval excludes 0), the number the theory orders the same way, and
    whether its best point at each budget is one the Monte Carlo cannot separate from the best."""
    ranking = family_ranking(rows)
    out = []
    for th in theories:
        agree = total = best_ok = 0
        for t0 in dict.fromkeys(r["t0"] for r in rows):
            rs = [r for r in rows if r["t0"] == t0]
            for i in range(len(rs)):
                for j in range(i + 1, len(rs)):
                    d, lo, hi = difference_interval(rs[i]["k"], rs[i]["n"], rs[j]["k"],
                                                    rs[j]["n"])
                    if lo > 0 or hi < 0:
                        total += 1
                        agree += int(np.sign(rs[i][th] - rs[j][th]) == np.sign(d))
            pick = min(rs, key=lambda r: r[th])["family"]
            best_ok += int(next(q["tied"] for q in ranking
                                if q["t0"] == t0 and q["family"] == pick))
        out.append({"theory": th, "pairs_agree": agree, "pairs_significant": total,
                    "best_ok": best_ok, "budgets": len(dict.fromkeys(r["t0"] for r in rows))})
    return out


# --------------------------------------------------------------------------------------------
# dimension scaling
# --------------------------------------------------------------------------------------------

def similarity(problem: Problem, schedule: str, beta_i, t0, corrected: bool = False):
    """The closed form's similarity variable ``x = sqrt(d) eps e^{-I}`` (paper's alpha), so that
    ``P = erf(x)``; with ``corrected`` ``x = sqrt(d/2) eps e^{-I_lag}`` (derived alpha, rate on
    the lagging variance). ``I = 0`` for the constant schedule."""
    eps = C.collapse_epsilon(problem.R, problem.w_star)
    b, t = np.broadcast_arrays(np.asarray(beta_i, float), np.asarray(t0, float))
    if schedule == "constant":
        I = np.zeros(b.shape)
    elif corrected:
        I = C.lagged_annealing_exponent(b, t, R=problem.R, lr=problem.lr,
                                        alpha=C.derived_alpha(problem.R, problem.w_star),
                                        schedule=schedule)
    else:
        I = C.annealing_exponent(b, t, R=problem.R, lr=problem.lr, alpha=C.PAPER_ALPHA,
                                 schedule=schedule)
    g = math.sqrt(2.0) if corrected else 1.0
    return math.sqrt(problem.d) * eps * np.exp(-I) / g


def isotonic(x, k, n):
    """Weighted least-squares non-decreasing fit of ``k/n`` against ``x`` (pool adjacent
    violators): the best single monotone curve through all points. Returns the fitted values in
    the order of ``x``."""
    x, k, n = (np.asarray(a, float) for a in (x, k, n))
    order = np.argsort(x, kind="stable")
    vals, wts, sizes = [], [], []
    for i in order:
        vals.append(k[i] / n[i])
        wts.append(n[i])
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            w = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w
            s = sizes[-2] + sizes[-1]
            vals[-2:], wts[-2:], sizes[-2:] = [v], [w], [s]
    fit_sorted = np.repeat(vals, sizes)
    fit = np.empty_like(fit_sorted)
    fit[order] = fit_sorted
    return fit


def collapse_fit(x, k, n, groups=None) -> dict:
    """How well points from several dimensions collapse onto *one* monotone curve of ``x``:
    the isotonic fit's standardised residuals ``(p_hat - fit) / se`` (smoothed binomial se).
    With exact collapse and independent points their mean square is about 1 or below (the fit
    adapts to the data); points off one curve give values well above. A monotone curve can only
    be contradicted where points of different groups (dimensions) interleave along ``x``:
    ``mixed_neighbours`` counts the neighbours in x order that come from different groups."""
    fit = isotonic(x, k, n)
    k, n = np.asarray(k, float), np.asarray(n, float)
    ps = (k + 1) / (n + 2)
    z = (k / n - fit) / np.sqrt(ps * (1 - ps) / n)
    mixed = 0
    if groups is not None:
        g = np.asarray(groups)[np.argsort(np.asarray(x, float), kind="stable")]
        mixed = int(np.sum(g[1:] != g[:-1]))
    return {"mean_z2": float(np.mean(z**2)), "max_z": float(np.max(np.abs(z))), "fit": fit,
            "mixed_neighbours": mixed}


def collapse_test(x, k, n, groups, n_boot: int = 2000, seed: int = 0) -> dict:
    """Parametric-bootstrap test of "one monotone curve of x": the observed mean z^2 of the
    isotonic fit (:func:`collapse_fit`) against its distribution when every point is redrawn
    from the fitted curve itself (binomial, same n) and refitted. Returns ``mean_z2``, the
    bootstrap ``p_value`` (fraction of redraws at least as large), ``mixed_neighbours`` and
    ``n_points``. Its power comes only from neighbours along x that belong to different groups."""
    obs = collapse_fit(x, k, n, groups)
    rng = np.random.default_rng(seed)
    n = np.asarray(n, int)
    fit = np.clip(obs["fit"], 0.0, 1.0)
    sims = np.array([collapse_fit(x, rng.binomial(n, fit), n)["mean_z2"] for _ in range(n_boot)])
    return {"mean_z2": obs["mean_z2"], "p_value": float(np.mean(sims >= obs["mean_z2"])),
            "mixed_neighbours": obs["mixed_neighbours"], "n_points": int(len(n))}


def _exp_and_vanilla_rows(cfg: DesignConfig, p: Problem, log_cells, n_seeds: int, key, head: dict,
                          extra=None, workers: int = 1, cache=None,
                          progress: bool | None = None) -> list[dict]:
    """Monte Carlo (``n_seeds`` runs) and every theory (draws from ``key``) for problem ``p`` on
    ``log_cells`` ((log10 beta_i R^2, t0), exponential schedule) and on the no-annealing row
    (``cfg.vanilla_steps`` steps): one row per cell, starting with the fields of ``head``;
    ``extra(schedule, beta_i, t0)`` adds columns (arrays over a schedule's cells)."""
    rows = []
    groups = [("exp", [(grid_beta(k, p.R**2), t0) for k, t0 in log_cells]),
              ("constant", [(1.0, float(cfg.vanilla_steps - cfg.n_iter_extra))])]
    for sched, cells in groups:
        mc = mc_points(p, sched, cells, n_seeds=n_seeds, n_iter_extra=cfg.n_iter_extra,
                       seed=cfg.seed, workers=workers, cache=cache, progress=progress)
        b = np.array([c[0] for c in cells])
        t = np.array([c[1] for c in cells])
        P = predict(p, sched, b, t, n_iter_extra=cfg.n_iter_extra, n_samples=cfg.theory_samples,
                    key=key)
        more = {} if extra is None else extra(sched, b, t)
        for i, (bi, t0) in enumerate(cells):
            rows.append({**head, "schedule": sched, "beta_i": float(bi), "t0": float(t0),
                         "log10_beta_r2": float(math.log10(bi * p.R**2)),
                         **{n: float(v[i]) for n, v in more.items()}, **_mc_fields(mc[i]),
                         **{n: float(v[i]) for n, v in P.items()}})
    return rows


def dimension_table(cfg: DesignConfig, workers: int = 1, cache=None,
                    progress: bool | None = None) -> list[dict]:
    """Monte Carlo (``cfg.dim_seeds`` runs) and every theory, exponential schedule, on
    ``cfg.dim_cells`` and the no-annealing row at every d of ``cfg.dims``, with both similarity
    variables."""
    rows = []
    for d in cfg.dims:
        p = dataclasses.replace(cfg.problem, d=int(d))
        rows += _exp_and_vanilla_rows(
            cfg, p, cfg.dim_cells, cfg.dim_seeds, _key(cfg.seed, 3, d), {"d": int(d)},
            extra=lambda sched, b, t, p=p: {"x": similarity(p, sched, b, t),
                                            "x_corrected": similarity(p, sched, b, t,
                                                                      corrected=True)},
            workers=workers, cache=cache, progress=progress)
    return rows


# --------------------------------------------------------------------------------------------
# other targets
# --------------------------------------------------------------------------------------------

def target_table(cfg: DesignConfig, workers: int = 1, cache=None,
                 progress: bool | None = None) -> list[dict]:
    """Monte Carlo (``cfg.target_seeds`` runs) and every theory on ``cfg.target_cells``
    (exponential schedule) and the no-annealing row for every (R, w_star) of ``cfg.targets``, at
    the problem's d."""
    rows = []
    for i_t, (R, w) in enumerate(cfg.targets):
        p = dataclasses.replace(cfg.problem, R=float(R), w_star=float(w))
        head = {"R": p.R, "w_star": p.w_star,
                "sqrt_d_eps": math.sqrt(p.d) * C.collapse_epsilon(p.R, p.w_star),
                "beta_c": C.derived_alpha(p.R, p.w_star) / p.R**2}
        rows += _exp_and_vanilla_rows(cfg, p, cfg.target_cells, cfg.target_seeds,
                                      _key(cfg.seed, 4, i_t), head, workers=workers,
                                      cache=cache, progress=progress)
    return rows


def validity(rows: list[dict], theories=THEORIES, z_max: float = VALID_Z,
             annealed_only=("closed form",)) -> list[dict]:
    """Per target (R, w_star) and theory: the largest |z| of the theory against the Monte Carlo
    over the target's cells (binomial se of the Monte Carlo, and of the simulated theory where
    known), and whether it holds (``max_z <= z_max``). The theories in ``annealed_only`` are
    judged on the annealed cells only: the paper's closed form does not describe training without
    annealing (chapter 3), where the other theories make their own predictions."""
    from ..figures.collapse_plots import z_scores

    out = []
    for key in dict.fromkeys((r["R"], r["w_star"]) for r in rows):
        rs = [r for r in rows if (r["R"], r["w_star"]) == key]
        k = np.array([r["k"] for r in rs])
        n = np.array([r["n"] for r in rs])
        row = {"R": key[0], "w_star": key[1], "sqrt_d_eps": rs[0]["sqrt_d_eps"],
               "beta_c": rs[0]["beta_c"]}
        for th in theories:
            se = np.array([r.get(f"{th} se", 0.0) for r in rs])
            z = z_scores(k, n, np.array([r[th] for r in rs]), se)
            if th in annealed_only:
                z = z[[r.get("schedule") != "constant" for r in rs]]
            row[f"{th} max_z"] = float(np.max(z))
            row[f"{th} holds"] = bool(np.max(z) <= z_max)
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# the recommender
# --------------------------------------------------------------------------------------------

#: annealing times tried by the recommender: a geometric ladder (ratio 2) from this value
_LADDER_START = 25.0
#: the recommender asks the finite-batch theory for p_hat + SAFETY_Z se <= p, with at most
#: UNDECIDED_MAX of its runs still unsettled (|s| < 0.9) when the run stops
SAFETY_Z = 2.0
UNDECIDED_MAX = 0.1
#: simulated runs per cell while searching, and for the final prediction
_SEARCH_SAMPLES = 1024
_FINAL_SAMPLES = 4096


class Recommendation(NamedTuple):
    """The recommender's answer.

    Attributes:
      status: ``"anneal"`` (the schedule reaches the target), ``"not_needed"`` (training
        without annealing already has ``P <= p``: the constant schedule), ``"unreachable"`` (no
        schedule of the family(ies) up to ``max_t0`` reaches ``p``: the best achievable one).
      schedule: family name (``constant`` when not needed). beta_i: initial inverse
      temperature. t0: annealing time (steps). n_iter: total steps (``t0 + n_iter_extra``).
      p_target: the requested probability. p_predicted: ``{theory: P}`` at this schedule.
      p_se: the finite-batch theory's sampling error. p_vanilla: finite-batch P without
      annealing. problem: the problem it was computed for. n_iter_extra: steps after t0.
      undecided: fraction of the finite-batch theory's runs not settled at the end.
    """

    status: str
    schedule: str
    beta_i: float
    t0: int
    n_iter: int
    p_target: float
    p_predicted: dict
    p_se: float
    p_vanilla: float
    problem: Problem
    n_iter_extra: int
    undecided: float = 0.0


def _ladder(max_t0: float) -> np.ndarray:
    n = int(math.floor(math.log2(max_t0 / _LADDER_START))) + 1
    t = np.unique(np.round(_LADDER_START * 2.0 ** np.arange(max(n, 1))))
    t = t[t <= max_t0]
    return t if t.size and t[-1] == max_t0 else np.append(t, float(max_t0))


def recommend(p_target: float, *, d: int, R: float, w_star: float, schedule: str = "exp",
              batch: int = 1024, lr: float = 0.05, sampling: str = "stratified",
              max_t0: float = 6400.0, n_iter_extra: int = 500,
              log10_beta_scan=tuple(-3.0 + 0.25 * k for k in range(15)), seed: int = 0,
              progress=None) -> Recommendation:
    """A short schedule (the shortest on the search grid below; of one family, or of all with
    ``schedule="best"``) whose
    finite-batch collapse probability is at most ``p_target`` with a margin of
    :data:`SAFETY_Z` standard errors, with at most :data:`UNDECIDED_MAX` of the theory's runs
    unsettled when they stop (``t0 + n_iter_extra`` steps: ``t0`` is when beta reaches 1, the
    runs then continue at beta = 1 so that they decide).

    Search: for t0 on a geometric ladder (ratio 2 from 25 steps up to ``max_t0``), the
    finite-batch theory on every family x scanned ``beta_i R^2 = 10^k``; at the first rung where
    some cell qualifies, the shortest qualifying t0 among eight equally spaced points between the
    previous rung and this one, at that cell's beta_i (so t0 is within 1/8 of the rung spacing
    of the shortest). Every call runs the same number of cells over a power-of-two number of
    steps, so the rungs share a few compiled programs. The answer's probabilities come from every theory, the
    finite-batch one with 4096 runs.

    Args:
      p_target: acceptable collapse probability in (0, 1). d: dimension (>= 33). R: mode
        distance (> 0). w_star: heavy-mode weight in (0.5, 1). schedule: ``exp``, ``step``,
        ``linear_beta``, ``linear_temperature`` or ``best``. batch, lr, sampling: the
        optimiser. max_t0: longest annealing time considered (steps). n_iter_extra: steps after
        t0. log10_beta_scan: starts considered. seed: seed of the theory's simulated runs.
      progress: optional callable(str) told what is being computed.
    Raises:
      ValueError naming the argument and its allowed range.
    """
    from ..config import FAMILIES

    p_target = check_open_unit("p", p_target)
    d = check_int_at_least("d", d, 33)
    R = check_positive("R", R)
    w_star = check_open_unit("w_star", w_star)
    if w_star <= 0.5:
        raise ValueError(f"w_star must lie in (0.5, 1) (the heavier mode's weight), got {w_star!r}")
    check_choice("schedule", schedule, FAMILIES + ("best",))
    max_t0 = check_positive("max_t0", max_t0)
    if max_t0 < _LADDER_START:
        raise ValueError(f"max_t0 must be >= {_LADDER_START:g} steps, got {max_t0!r}")
    problem = Problem(d=d, R=R, w_star=w_star, lr=lr, batch=batch, sampling=sampling)
    n_iter_extra = check_int_at_least("n_iter_extra", n_iter_extra, 0)
    say = progress or (lambda _: None)
    fams = FAMILIES if schedule == "best" else (schedule,)
    betas = np.array([grid_beta(k, R**2) for k in log10_beta_scan])
    betas = betas[betas <= 1.0]
    key = _key(seed, 5)

    width = betas.size + 1

    def fb(fam, b, t, n):
        """Finite-batch P, se and undecided fraction at cells (b, t), run as ``width`` cells over
        a number of steps rounded up to a power of two (a padding cell runs that long), so that
        the rungs of the ladder share a few compiled programs instead of compiling one each."""
        b, t = np.broadcast_arrays(np.asarray(b, float), np.asarray(t, float))
        k = b.size
        steps = np.ceil(t) + n_iter_extra
        T = 2 ** int(math.ceil(math.log2(max(steps.max(), 2))))
        pad = width - k
        bb = np.concatenate([b, np.full(pad, b[-1])])
        tt = np.concatenate([t, np.full(pad, t[-1])])
        nn = np.concatenate([steps, np.full(pad, T)]).astype(int)
        st = C.stochastic_collapse_probability(
            bb, tt, d=d, R=R, w_star=w_star, lr=lr, batch=batch, sampling=sampling, key=key,
            n_iter=nn, n_samples=n, schedule=fam)
        return (np.asarray(st.p, float)[:k], np.asarray(st.se, float)[:k],
                np.asarray(st.undecided, float)[:k])

    def meets(p, se, und):
        return (p + SAFETY_Z * se <= p_target) & (und <= UNDECIDED_MAX)

    def answer(status, fam, b, t0):
        sched = "constant" if status == "not_needed" else fam
        bb, tt = (1.0, float(t0)) if sched == "constant" else (b, float(t0))
        P = predict(problem, sched, np.array([bb]), np.array([tt]), n_iter_extra=n_iter_extra,
                    n_samples=_FINAL_SAMPLES, key=key)
        se = float(P.pop("finite-batch se")[0])
        und = float(P.pop("finite-batch undecided")[0])
        return Recommendation(status, sched, float(bb), int(t0), int(t0) + n_iter_extra,
                              p_target, {k: float(v[0]) for k, v in P.items()}, se, p_van,
                              problem, n_iter_extra, und)

    def final_ok(rec):
        return bool(meets(rec.p_predicted[BEST_THEORY], rec.p_se, rec.undecided))

    say("no annealing")
    van_t0 = 300
    pv, sv, uv = _vanilla(problem, key, van_t0, n_iter_extra)
    p_van = float(pv)
    if meets(pv, sv, uv):
        return answer("not_needed", "constant", 1.0, van_t0)
    ladder = _ladder(max_t0)
    prev = 0.0
    best_seen = None
    for i_rung, t0 in enumerate(ladder):
        say(f"t0 = {t0:g}")
        found = []
        for fam in fams:
            p, se, und = fb(fam, betas, np.full(betas.shape, float(t0)), _SEARCH_SAMPLES)
            for b, pp, ss, uu in zip(betas, p, se, und):
                if uu <= UNDECIDED_MAX and (best_seen is None or pp < best_seen[0]):
                    best_seen = (pp, fam, b, t0)
                if meets(pp, ss, uu):
                    found.append((pp, fam, b))
        if found:
            _, fam, b = min(found, key=lambda f: f[0])
            lo = max(prev, _LADDER_START / 2)
            fine = np.unique(np.ceil(np.linspace(lo, t0, 9)[1:]))[: width - 1]
            p, se, und = fb(fam, np.full(fine.shape, b), fine, _SEARCH_SAMPLES)
            ok = np.nonzero(meets(p, se, und))[0]
            start = ok[0] if ok.size else len(fine) - 1
            # the answer's own prediction (4096 runs) must meet the rule too: if it does not,
            # the next candidate times (this interval, then the following rungs) are tried
            for t_try in list(fine[start:]) + [t for t in ladder[i_rung + 1:]]:
                rec = answer("anneal", fam, b, int(t_try))
                if final_ok(rec):
                    return rec
            break
        prev = float(t0)
    if best_seen is None:                 # no settled cell at all: report the last rung's best
        best_seen = (None, fams[0], float(betas[0]), ladder[-1])
    _, fam, b, t0 = best_seen
    return answer("unreachable", fam, b, int(t0))


def _vanilla(problem: Problem, key, t0: int, n_iter_extra: int):
    """Finite-batch probability, se and undecided fraction without annealing (beta = 1,
    variance 1)."""
    st = C.stochastic_collapse_probability(
        np.array([1.0]), np.array([float(t0)]), d=problem.d, R=problem.R, w_star=problem.w_star,
        lr=problem.lr, batch=problem.batch, sampling=problem.sampling, key=key,
        n_extra=n_iter_extra, n_samples=_SEARCH_SAMPLES, schedule="constant")
    return float(st.p[0]), float(st.se[0]), float(st.undecided[0])


def verify(rec: Recommendation, n_seeds: int, *, seed: int = 0, workers: int = 1, cache=None,
           progress: bool | None = None) -> dict:
    """Monte Carlo of a recommendation: ``n_seeds`` runs of the reduced sampler; returns
    ``p_mc, ci_low, ci_high`` (95 % Wilson), ``n_runs``, ``n_failed``."""
    n_seeds = check_int_at_least("verify", n_seeds, 1)
    row = mc_points(rec.problem, rec.schedule, [(rec.beta_i, float(rec.t0))], n_seeds=n_seeds,
                    n_iter_extra=rec.n_iter_extra, seed=seed, workers=workers, cache=cache,
                    progress=progress)[0]
    f = _mc_fields(row)
    return {"p_mc": f["p_mc"], "ci_low": f["ci_low"], "ci_high": f["ci_high"],
            "n_runs": f["n_runs"], "n_failed": f["n_failed"], "k": f["k"], "n": f["n"],
            "undecided": f["undecided"]}


def recommend_table(cfg: DesignConfig, workers: int = 1, cache=None,
                    progress: bool | None = None) -> list[dict]:
    """The recommender on every setting ``(d, R, w_star, p, schedule)`` of
    ``cfg.recommend_settings`` (the problem's batch, learning rate and sampling), each checked
    with ``cfg.verify_seeds`` Monte-Carlo runs."""
    rows = []
    for d, R, w, p, family in cfg.recommend_settings:
        t = time.perf_counter()
        rec = recommend(p, d=int(d), R=R, w_star=w, schedule=family,
                        batch=cfg.problem.batch, lr=cfg.problem.lr,
                        sampling=cfg.problem.sampling, max_t0=cfg.max_t0,
                        n_iter_extra=cfg.n_iter_extra, seed=cfg.seed)
        t_rec = time.perf_counter() - t
        mc = verify(rec, cfg.verify_seeds, seed=cfg.seed, workers=workers, cache=cache,
                    progress=progress)
        rows.append({"d": int(d), "R": R, "w_star": w, "p_target": p, "asked": family,
                     "status": rec.status,
                     "schedule": rec.schedule, "beta_i": rec.beta_i, "t0": rec.t0,
                     "n_iter": rec.n_iter, **rec.p_predicted, "finite-batch se": rec.p_se,
                     "finite-batch undecided": rec.undecided,
                     "p_vanilla": rec.p_vanilla, "seconds": round(t_rec, 1), **mc})
    return rows


# --------------------------------------------------------------------------------------------
# archive
# --------------------------------------------------------------------------------------------

DESIGN_ARCHIVE = "schedule_design"
_TABLES = ("scan.csv", "families.csv", "dimensions.csv", "targets.csv", "recommend.csv")
_TEXT = ("family", "schedule", "status", "asked")


def design_config(cfg: DesignConfig) -> dict:
    """What the chapter's numbers depend on (compared with an archive's provenance)."""
    from ..archive import json_roundtrip

    return json_roundtrip({"design": dataclasses.asdict(cfg)})


def run_design(cfg: DesignConfig, workers: int = 1, cache=None,
               progress: bool | None = None) -> dict[str, list[dict]]:
    """Every table of chapter 5 (Monte Carlo through the cached grid runner)."""
    scan = theory_scan(cfg)
    return {"scan.csv": scan,
            "families.csv": family_table(cfg, scan, workers, cache, progress),
            "dimensions.csv": dimension_table(cfg, workers, cache, progress),
            "targets.csv": target_table(cfg, workers, cache, progress),
            "recommend.csv": recommend_table(cfg, workers, cache, progress)}


def write_design_archive(cfg: DesignConfig, folder, workers: int = 1, command: str = "",
                         progress: bool | None = None):
    """Compute chapter 5 from scratch (a fresh results cache) and archive it in ``folder``."""
    import tempfile

    from ..archive import current_commit, write_archive

    commit = current_commit()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_design_") as fresh:
        tables = run_design(cfg, workers=workers, cache=fresh, progress=progress)
    return write_archive(folder, tables, design_config(cfg), time.perf_counter() - t, command,
                         commit)


def _numeric(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        q = {}
        for k, v in r.items():
            if k in _TEXT:
                q[k] = v
            elif isinstance(v, str) and v in ("True", "False"):
                q[k] = v == "True"
            else:
                q[k] = float(v)
        out.append(q)
    return out


def load_design(cfg: DesignConfig, workers: int = 1, cache=None, progress: bool | None = None):
    """``(tables, provenance or None)``: from ``data/DESIGN_ARCHIVE`` when it holds this
    configuration, else computed (Monte Carlo cached per cell)."""
    from ..archive import data_dir, read_archive

    got = read_archive(data_dir(DESIGN_ARCHIVE))
    if got is not None and got[1]["config"] == design_config(cfg):
        tables, prov = got
    else:
        tables, prov = run_design(cfg, workers, cache, progress), None
    return {k: _numeric(v) for k, v in tables.items()}, prov


# --------------------------------------------------------------------------------------------
# figures (the chapter and ``python -m annealvi_lib figures ch5_*`` draw the same)
# --------------------------------------------------------------------------------------------

_FAMILY_LABEL_EXTRA = {"hold at beta_c": r"hold at $0.98\,\beta_c$ (closed form's best)"}


def family_label(name: str, short: bool = False) -> str:
    """Reader-facing name of a family (or of the closed form's best schedule; ``short`` drops
    its parenthesis)."""
    from ..figures.style import SCHEDULE_LABELS

    if short and name == "hold at beta_c":
        return r"hold at $0.98\,\beta_c$"
    return _FAMILY_LABEL_EXTRA.get(name, SCHEDULE_LABELS.get(name, name))


def plot_families(scan: list[dict], rows: list[dict], beta_c: float, R: float):
    """One panel per budget: the finite-batch prediction against ``beta_i R^2`` for each family
    (lines), the Monte Carlo at each family's predicted optimum (markers with Wilson 95 % bars)
    and at the closed form's best schedule (black square); dotted line: beta_c."""
    import matplotlib.pyplot as plt

    from ..figures.style import SCHEDULE_STYLES

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


def _register_figures():
    from ..figures.registry import register

    @register("ch5_families", chapter=5,
              description="schedule families at fixed budgets: predicted and measured P(collapse)")
    def _fig_families(preset):
        cfg = preset.design
        t = _tables(preset)
        p = cfg.problem
        return plot_families(t["scan.csv"], t["families.csv"],
                             C.derived_alpha(p.R, p.w_star) / p.R**2, p.R)

    @register("ch5_similarity", chapter=5,
              description="P(collapse) against the similarity variable at several dimensions")
    def _fig_similarity(preset):
        return plot_similarity(_tables(preset)["dimensions.csv"])

    @register("ch5_targets", chapter=5,
              description="predicted against measured P(collapse) on other targets (R, w*)")
    def _fig_targets(preset):
        return plot_targets(_tables(preset)["targets.csv"])


_register_figures()
