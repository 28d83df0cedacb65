"""Chapter 3's finite-batch studies: the collapse probability against the batch size and the
steps after t0 on a few cells, the batch-size scan of the hottest row (archived in
``data/bscan_hottest_row``: too long for a CPU book build), and the checks of the gradient-noise
model behind the finite-batch theory (its moments and an ablation).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from ..config import GMMGridConfig, grid_beta
from ..metrics import SETTLED_S, undecided_counts, z_scores
from ..theory import collapse as C
from ..theory import propagated as prop
from .ch3_collapse_probability import TheoryGrid, cell_config
from .grid import run_grid

__all__ = ["sensitivity_rows", "BSCAN_ARCHIVE", "batch_scan_settings", "batch_scan_config",
           "run_batch_scan", "write_batch_scan", "load_batch_scan", "batch_scan_theory",
           "batch_scan_z", "protocol_differences", "NOISE_CHECK_STATES", "noise_moment_rows",
           "ABLATION_CELLS", "noise_ablation_rows"]


def sensitivity_rows(G: GMMGridConfig, workers: int = 1) -> list[dict]:
    """Collapse rates on ``G.sensitivity_cells`` for each batch size and each run length."""
    p = G.problem
    rows = []
    for k, t0 in G.sensitivity_cells:
        b_i = grid_beta(k, p.R**2)
        p_cf = float(C.collapse_probability(b_i, t0, d=p.d, R=p.R, w_star=p.w_star, lr=p.lr))
        # the B -> infinity limit of the simulation: the ODE-propagated probability
        p_ode = float(prop.ode_collapse_probability(
            np.array([[b_i]]), np.array([[float(t0)]]), d=p.d, R=p.R, w_star=p.w_star, lr=p.lr,
            key=jax.random.key(1), n_extra=G.n_iter_extra, n_samples=G.ode_samples,
            with_variance=True).p.ravel()[0])
        settings = [(B, G.n_iter_extra) for B in G.sensitivity_batches]
        settings += [(p.batch, e) for e in G.sensitivity_extras if e != G.n_iter_extra]
        for B, extra in settings:
            cfg = cell_config(G, k, t0, G.sensitivity_seeds, batch=B, n_iter_extra=extra)
            r = run_grid("gmm", cfg, workers=workers).summary[0]
            p_st = float(prop.stochastic_collapse_probability(
                np.array([b_i]), np.array([float(t0)]), d=p.d, R=p.R, w_star=p.w_star, lr=p.lr,
                batch=B, sampling=p.sampling, key=jax.random.key(1), n_extra=extra,
                n_samples=G.stochastic_samples).p[0])
            rows.append({"log10(beta_i R^2)": k, "t0": t0, "B": B, "steps after t0": extra,
                         "p_collapse": r["p_collapse"], "ci_low": r["ci_low"],
                         "ci_high": r["ci_high"], "closed form": p_cf, "ODE-propagated": p_ode,
                         "finite-batch theory": p_st})
    return rows


#: Archive folder of the batch-size scan (``python -m annealvi_lib batch-scan`` writes it).
BSCAN_ARCHIVE = "bscan_hottest_row"


def batch_scan_settings(G: GMMGridConfig) -> list[tuple[int, str]]:
    """The (batch, sampling) points of the scan: every ``G.bscan_batches`` in the grid's own
    convention, plus the other protocol at the grid's batch (categorical: the same number of
    samples in total, ``2 B``; stratified: ``B / 2`` per component) to measure the protocol's
    effect on this row."""
    p = G.problem
    pts = [(int(B), p.sampling) for B in G.bscan_batches]
    if p.sampling == "stratified":
        pts.append((2 * p.batch, "categorical"))
    else:
        pts.append((max(p.batch // 2, 1), "stratified"))
    return pts


def batch_scan_config(G: GMMGridConfig) -> dict:
    """What the scan's numbers depend on (compared with an archive's provenance)."""
    return {"problem": dataclasses.asdict(G.problem), "log10_beta_r2": G.bscan_log10,
            "t0s": list(G.bscan_t0s), "points": [list(x) for x in batch_scan_settings(G)],
            "n_seeds": G.bscan_seeds, "n_iter_extra": G.n_iter_extra, "seed": G.seed,
            "sampler": G.sampler}


def run_batch_scan(G: GMMGridConfig, workers: int = 1, progress: bool | None = None,
                   cache=None):
    """Monte Carlo of the batch-size scan: ``(point rows, run rows)``; cells cached like the grid
    (in ``cache``, default the results cache).

    Point rows: ``batch, sampling, total_samples, t0, n_runs, n_failed, n_collapsed, p_collapse,
    ci_low, ci_high, n_undecided``; run rows: ``batch, sampling, t0, replicate, s, collapsed,
    failed``.
    """
    points, runs = [], []
    for B, sampling in batch_scan_settings(G):
        prob = dataclasses.replace(G.problem, batch=B, sampling=sampling)
        cfg = dataclasses.replace(G, problem=prob, log10_beta_r2=(G.bscan_log10,),
                                  t0s=tuple(G.bscan_t0s), n_seeds=G.bscan_seeds)
        res = run_grid("gmm", cfg, workers=workers, progress=progress, cache=cache)
        und = undecided_counts(res.runs, [grid_beta(G.bscan_log10, G.problem.R**2)],
                               sorted(G.bscan_t0s))[0]
        total = B if sampling == "categorical" else 2 * B
        for r in res.summary:
            j = sorted(G.bscan_t0s).index(r["t0"])
            points.append({"batch": B, "sampling": sampling, "total_samples": total,
                           "t0": r["t0"], "n_runs": r["n_runs"], "n_failed": r["n_failed"],
                           "n_collapsed": r["n_collapsed"], "p_collapse": r["p_collapse"],
                           "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                           "n_undecided": int(und[j])})
        for r in res.runs:
            runs.append({"batch": B, "sampling": sampling, "t0": r["t0"],
                         "replicate": r["replicate"], "s": r["s"], "collapsed": r["collapsed"],
                         "failed": r["failed"]})
    return points, runs


def write_batch_scan(G: GMMGridConfig, folder, workers: int = 1, command: str = "",
                     progress: bool | None = None):
    """Run the scan from scratch (in an empty temporary cache, so that every run is computed by
    this code and the recorded runtime is the computation's) and archive it (per-point and
    per-run CSVs, provenance) in ``folder``."""
    import tempfile

    from ..archive import current_commit, write_archive

    commit = current_commit()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_bscan_") as fresh:
        points, runs = run_batch_scan(G, workers=workers, progress=progress, cache=fresh)
    return write_archive(folder, {"bscan_points.csv": points, "bscan_runs.csv": runs},
                         batch_scan_config(G), time.perf_counter() - t, command, commit)


def load_batch_scan(G: GMMGridConfig, workers: int = 1):
    """The scan's point rows for ``G``: from the archive ``data/BSCAN_ARCHIVE`` when its
    configuration is ``G``'s, else computed (cached). Returns ``(rows, provenance or None)``;
    numeric fields as numbers."""
    from ..archive import data_dir, json_roundtrip, read_archive

    got = read_archive(data_dir(BSCAN_ARCHIVE))
    if got is not None and got[1]["config"] == json_roundtrip(batch_scan_config(G)):
        rows = []
        for r in got[0]["bscan_points.csv"]:
            rows.append({k: (v if k == "sampling" else float(v)) for k, v in r.items()})
        for r in rows:
            for k in ("batch", "total_samples", "n_runs", "n_failed", "n_collapsed",
                      "n_undecided"):
                r[k] = int(r[k])
        return rows, got[1]
    return run_batch_scan(G, workers=workers)[0], None


def batch_scan_theory(G: GMMGridConfig, rows: list[dict], seed: int = 1) -> list[dict]:
    """Add the finite-batch theory (at each point's batch and protocol, with its standard error)
    and the ODE-propagated probability (B -> infinity) to the scan's point rows."""
    p = G.problem
    b_i = grid_beta(G.bscan_log10, p.R**2)
    t0s = np.array(sorted(G.bscan_t0s))
    kw = dict(d=p.d, R=p.R, w_star=p.w_star, lr=p.lr, key=jax.random.key(seed),
              n_extra=G.n_iter_extra)
    ode = prop.ode_collapse_probability(np.full(t0s.shape, b_i), t0s, n_samples=G.ode_samples,
                                     with_variance=True, **kw)
    out = []
    cache = {}
    for r in rows:
        key = (r["batch"], r["sampling"])
        if key not in cache:
            cache[key] = prop.stochastic_collapse_probability(
                np.full(t0s.shape, b_i), t0s, batch=r["batch"], sampling=r["sampling"],
                n_samples=G.stochastic_samples, settled_s=SETTLED_S, **kw)
        st = cache[key]
        j = int(np.searchsorted(t0s, r["t0"]))
        out.append({**r, "finite-batch theory": float(st.p[j]), "theory_se": float(st.se[j]),
                    "ODE-propagated": float(ode.p[j])})
    return out


def batch_scan_z(rows: list[dict], sampling: str):
    """``(z of the finite-batch theory at every point, z of the ODE-propagated probability at
    the points of the main protocol)``: |Monte Carlo - theory| over the combined standard error
    (:func:`annealvi_lib.metrics.z_scores`; the finite-batch theory's own sampling error
    included)."""
    def counts(rs):
        return (np.array([r["n_collapsed"] for r in rs], float),
                np.array([r["n_runs"] - r["n_failed"] for r in rs], float))

    k, n = counts(rows)
    z_st = z_scores(k, n, [r["finite-batch theory"] for r in rows],
                    [r["theory_se"] for r in rows])
    main = [r for r in rows if r["sampling"] == sampling]
    km, nm = counts(main)
    z_ode = z_scores(km, nm, [r["ODE-propagated"] for r in main])
    return [float(z) for z in z_st], [float(z) for z in z_ode]


def protocol_differences(rows: list[dict], total: int) -> list[tuple]:
    """Categorical minus stratified collapse probability at ``total`` samples per step, per t0:
    ``(t0, dp, low, high)`` with a normal 95% interval (independent runs)."""
    out = []
    for t0 in sorted({r["t0"] for r in rows}):
        pick = {r["sampling"]: r for r in rows if r["t0"] == t0 and r["total_samples"] == total}
        if {"stratified", "categorical"} <= set(pick):
            a, b = pick["stratified"], pick["categorical"]
            na, nb = a["n_runs"] - a["n_failed"], b["n_runs"] - b["n_failed"]
            se = math.sqrt(a["p_collapse"] * (1 - a["p_collapse"]) / na
                           + b["p_collapse"] * (1 - b["p_collapse"]) / nb)
            dp = b["p_collapse"] - a["p_collapse"]
            out.append((t0, dp, dp - 1.96 * se, dp + 1.96 * se))
    return out


#: States (log10 beta R^2, m1, m2, s, v beta) at which the chapter checks the noise model.
NOISE_CHECK_STATES = ((-3.0, 0.05, -0.03, -0.95, 1.0), (-1.0, 0.1, -0.1, -0.9, 1.0),
                      (-0.5, 0.2, -0.1, -0.8, 1.0), (-1.0, 0.1, -0.1, -0.9, 3.0))


def noise_moment_rows(G: GMMGridConfig, n_draws: int = 2000, seed: int = 5,
                      states=NOISE_CHECK_STATES) -> list[dict]:
    """The finite-batch model's noise moments against the reduced sampler's empirical ones.

    At each state, ``n_draws`` independent gradient evaluations of the reduced sampler (batch and
    protocol of ``G.problem``) give the empirical per-direction variance of: the gradient of mean
    1 along mu* (in-span; the model includes the target-pull correction); the *relative* mode
    ``g1 - g2`` along mu* (what moves ``Delta``); mean 1 along the second span axis (in-span,
    responsibilities' fluctuation not modelled); and, orthogonal to the span, the mean Gram
    matrix over D (diagonal and cross term) -- the sampler's own ``E[C C^T]``, so these rows check
    the moment integrals ``S``, not the Wishart law. The model's values come from
    :func:`annealvi_lib.theory.propagated.noise_covariance` and
    :func:`annealvi_lib.theory.propagated.target_pull_correction`. Returns rows with the relative
    difference and its sampling standard error (``sqrt(2/n)`` for an empirical variance; the
    standard error of the mean for the Gram entries).
    """
    from ..models import reduced as Rd
    from ..models.student import Hyper

    p = G.problem
    hyper = Hyper(lr=p.lr, batch=p.batch, sampling=p.sampling)
    n_bc = p.batch if p.sampling == "stratified" else 0.5 * p.batch
    D = p.d - 3
    se_var = math.sqrt(2.0 / n_draws)
    rows = []
    for k, m1, m2, s, vb in states:
        beta = grid_beta(k, p.R**2)
        v = vb / beta
        g, S_draws = Rd.gradient_noise_draws(jax.random.key(seed), (m1, m2), s, (v, v), beta,
                                             p.R, p.w_star, p.d, hyper, n_draws)
        gc = g - g.mean(0)
        rel = gc[:, 0, 0] - gc[:, 1, 0]
        q11, q22, q12 = (float(x) for x in prop.noise_covariance(s, v, beta, R=p.R,
                                                              batch_per_component=n_bc))
        d11, d22, d12 = (float(x) for x in prop.target_pull_correction(
            m1, m2, s, v, beta, R=p.R, w_star=p.w_star, batch_per_component=n_bc))

        def gram(i, j):
            x = S_draws[:, i, j] / D
            return float(x.mean()), float(x.std() / abs(x.mean()) / math.sqrt(n_draws))

        g00, se00 = gram(0, 0)
        g01, se01 = gram(0, 1)
        checks = (("mean 1, along $\\mu^*$", q11 + d11, float(np.mean(gc[:, 0, 0] ** 2)), se_var),
                  ("$g_1-g_2$, along $\\mu^*$", q11 + q22 - 2 * q12 + d11 + d22 - 2 * d12,
                   float(np.mean(rel ** 2)), se_var),
                  ("mean 1, second span axis", q11, float(np.mean(gc[:, 0, 1] ** 2)), se_var),
                  ("off the span, $Q_{11}$", q11, g00, se00),
                  ("off the span, $Q_{12}$", q12, g01, se01))
        for name, model, emp, err in checks:
            rows.append({"log10(beta R^2)": k, "state": f"({m1:g}, {m2:g}, {s:g})",
                         "v beta": vb, "quantity": name, "model": model, "sampler": emp,
                         "rel. diff": emp / model - 1.0, "rel. SE": err})
    return rows


#: Cells (log10 beta_i R^2, t0) of the noise ablation: the hottest row fast and slow, and two
#: warmer cells.
ABLATION_CELLS = ((-3.0, 100.0), (-3.0, 400.0), (-2.0, 200.0), (-1.5, 300.0))


def noise_ablation_rows(G: GMMGridConfig, A: dict, T: TheoryGrid, seed: int = 1) -> list[dict]:
    """Which part of the gradient noise matters: the finite-batch theory with only its in-span
    part, only its off-span part, and both, next to the propagated map (no noise) and the Monte
    Carlo, on the :data:`ABLATION_CELLS` that lie on the grid ``A`` (same initial draws)."""
    p = G.problem
    cells = [(grid_beta(k, p.R**2), t0) for k, t0 in ABLATION_CELLS]
    idx = [(int(np.argmin(np.abs(A["beta_is"] - b))), int(np.argmin(np.abs(A["t0s"] - t))))
           for b, t in cells]
    keep = [n for n, (b, t) in enumerate(cells)
            if math.isclose(A["beta_is"][idx[n][0]], b, rel_tol=1e-9) and A["t0s"][idx[n][1]] == t]
    if not keep:
        return []
    b = np.array([cells[n][0] for n in keep])
    t = np.array([cells[n][1] for n in keep])
    kw = dict(d=p.d, R=p.R, w_star=p.w_star, lr=p.lr, key=jax.random.key(seed),
              n_extra=G.n_iter_extra, n_samples=G.stochastic_samples, batch=p.batch,
              sampling=p.sampling)
    parts = {name: prop.stochastic_collapse_probability(b, t, in_span=a, perpendicular=q, **kw).p
             for name, a, q in (("in-span noise only", True, False),
                                ("off-span noise only", False, True))}
    rows = []
    for m, n in enumerate(keep):
        i, j = idx[n]
        rows.append({"log10(beta_i R^2)": ABLATION_CELLS[n][0], "t0": ABLATION_CELLS[n][1],
                     "Monte Carlo": float(A["p_collapse"][i, j]),
                     "no noise (ODE-propagated)": float(T.p_ode[i, j]),
                     "in-span noise only": float(parts["in-span noise only"][m]),
                     "off-span noise only": float(parts["off-span noise only"][m]),
                     "both (finite-batch theory)": float(T.p_stoch[i, j])})
    return rows
