"""Chapter 5's recommender: the shortest schedule of a family (on a search grid) whose collapse
probability, predicted by the finite-batch theory of chapter 3, stays below a target p -- and
its check by Monte Carlo (``python -m annealvi_lib recommend``).
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np

from .._validate import check_choice, check_int_at_least, check_open_unit, check_positive
from ..config import DesignConfig, Problem, grid_beta
from ..theory import propagated as prop
from .ch5_schedule_design import BEST_THEORY, _key, _mc_fields, mc_points, predict

__all__ = ["SAFETY_Z", "UNDECIDED_MAX", "Recommendation", "recommend", "verify",
           "recommend_table"]


#: annealing times tried by the recommender: a geometric ladder (ratio 2) from this value
_LADDER_START = 25.0
#: the recommender asks the finite-batch theory for p_hat + SAFETY_Z se <= p, with at most
#: UNDECIDED_MAX of its runs still unsettled (|s| < 0.9) when the run stops (the same 10 % as
#: the grid's :data:`annealvi_lib.metrics.UNDECIDED_MAX`, applied here to the theory's runs)
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
        st = prop.stochastic_collapse_probability(
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
    st = prop.stochastic_collapse_probability(
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
