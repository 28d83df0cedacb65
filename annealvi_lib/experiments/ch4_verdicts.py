"""Chapter 4's verdicts: the collapse criteria compared on the archived runs and a verdict on
each of the paper's RealNVP claims, decided from interval rules (Wilson intervals per cell,
Newcombe intervals for differences) so that the page's conclusions are computed, never typed.
"""

from __future__ import annotations

import numpy as np

from ..config import RealNVPGridConfig
from ..metrics import wilson_interval
from ..models.schedules import annealing_rate

__all__ = ["SUPPORTED", "CONTRADICTED", "UNRESOLVED", "UNTESTED", "CRITERIA", "SMALL_DIFFERENCE",
           "RATE_TOLERANCE", "CLAIMS", "collapsed_by", "cell_counts", "trend_roles",
           "verdicts_from_cells", "verdicts_from_grid", "conclusions"]

#: verdict labels
SUPPORTED, CONTRADICTED, UNRESOLVED, UNTESTED = ("supported", "contradicted", "not resolved",
                                                 "not tested")


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
