"""Chapter 5: designing an annealing schedule -- schedule families at a fixed budget and the
dimension and target scaling of the collapse probability (the recommender is in
:mod:`annealvi_lib.experiments.ch5_recommend`, the archive of the chapter's tables in
:mod:`annealvi_lib.experiments.ch5_archive`, the figures in :mod:`annealvi_lib.figures.ch5`).

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

import jax
import numpy as np

from ..theory import collapse as C
from ..theory import propagated as prop
from ..config import DesignConfig, GMMGridConfig, Problem, grid_beta
from .grid import run_grid
from ..metrics import difference_interval

__all__ = ["THEORIES", "BEST_THEORY", "HOLD_FRACTION", "predict", "closed_form_bound",
           "theory_scan", "optimal_points", "mc_points", "family_table", "family_ranking",
           "theory_ranking", "similarity", "isotonic", "collapse_fit", "collapse_test", "direct_exponent", "dimension_table",
           "target_table", "validity"]

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
    prop_kw = dict(key=key, n_extra=n_iter_extra, n_samples=n_samples, schedule=schedule,
                   n_iter=n_iter, **kw)
    if "ODE-propagated" in theories:
        out["ODE-propagated"] = prop.ode_collapse_probability(b, t, **prop_kw).p
    if "finite-batch" in theories:
        st = prop.stochastic_collapse_probability(b, t, batch=problem.batch,
                                                  sampling=problem.sampling, **prop_kw)
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
    :data:`~annealvi_lib.metrics.SETTLED_S`, not yet settled), in the order of ``cells``."""
    from ..metrics import SETTLED_S

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
    from ..metrics import z_scores

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
# figures (the chapter and ``python -m annealvi_lib figures ch5_*`` draw the same)
# --------------------------------------------------------------------------------------------

