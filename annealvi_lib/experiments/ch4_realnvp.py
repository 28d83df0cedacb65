"""Chapter 4's computations: the demo training run, the RealNVP collapse grid, the same grid
with the GMM student, the dimension trend, the normalisation and initialisation comparisons and
their archives (the verdicts on the paper's claims are in
:mod:`annealvi_lib.experiments.ch4_verdicts`, the figures in :mod:`annealvi_lib.figures.ch4`).

Every function takes the preset's :class:`~annealvi_lib.config.RealNVPGridConfig`. The grid and
the side studies of the ``book`` preset take about an hour on 2 cores, so they are archived
under ``data/`` (:data:`GRID_ARCHIVE`, :data:`STUDIES_ARCHIVE`; ``python -m annealvi_lib
realnvp-archive grid|studies``) with their provenance; a configuration that does not match an
archive is computed by the cached grid runner (:func:`annealvi_lib.experiments.grid.run_grid`, one file per
cell), so the notebook and ``python -m annealvi_lib figures ch4_*`` share them. The demo run is
recomputed each time.
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import numpy as np

from ..models import realnvp as rn
from ..models import realnvp_training as rtrain
from ..config import GMMGridConfig, Problem, RealNVPGridConfig
from ..archive import json_roundtrip
from .grid import run_grid
from ..metrics import run_summary, wilson_interval
from ..models.schedules import Schedule
from .ch4_verdicts import SMALL_DIFFERENCE, cell_counts

__all__ = ["DEMO_ARMS", "DemoSetting", "demo_setting", "demo_runs", "demo_summary", "FlowGrid",
           "flow_grid", "gmm_comparison_config",
           "gmm_comparison_cells", "gmm_trend", "trend_rows", "compare_rows", "compare_verdict",
           "GRID_ARCHIVE", "STUDIES_ARCHIVE", "grid_archive_config", "write_grid_archive",
           "load_grid_archive", "flow_grid_rows", "studies_config", "COMPARE_ARMS",
           "compare_cells", "run_studies", "write_studies_archive", "load_studies"]

#: the two arms of the demo run, in plotting order
DEMO_ARMS = ("annealed", "no annealing")


# --------------------------------------------------------------------------------------------
# one annealed run
# --------------------------------------------------------------------------------------------

class DemoSetting(NamedTuple):
    """Schedule of the demo run: a middle beta_i of the grid, the longest t0."""

    beta_i: float
    t0: float
    n_iter: int
    record_every: int


def demo_setting(cfg: RealNVPGridConfig) -> DemoSetting:
    """The demo's ``beta_i`` (the grid's middle annealed row, or the first one for a grid of at
    most two rows), ``t0 = max(t0s)``, ``n_iter = t0 + n_iter_extra`` and a record block giving
    about 100 trajectory points."""
    b = cfg.beta_is
    beta_i = b[len(b) // 2 - 1] if len(b) > 2 else b[0]
    t0 = max(cfg.t0s)
    n_iter = int(t0) + cfg.n_iter_extra
    return DemoSetting(float(beta_i), float(t0), n_iter, max(1, n_iter // 100))


def demo_runs(cfg: RealNVPGridConfig) -> dict:
    """Train one flow with annealing and one at ``beta = 1``, from the same key
    (``cfg.seed + 1``) on the grid's target.

    Returns ``{arm: (params, Trajectory, FinalStats)}`` for the arms :data:`DEMO_ARMS`, without
    a seed axis (:func:`annealvi_lib.models.realnvp_training.train`).
    """
    s = demo_setting(cfg)
    spec = rn.spec_from_config(cfg)
    tgt = rtrain.grid_target(cfg, cfg.seed)
    key = jax.random.key(cfg.seed + 1)
    scheds = {"annealed": Schedule("exp", s.beta_i, s.t0), "no annealing": Schedule("constant")}
    return {name: rtrain.train(key, spec, scheds[name], s.n_iter, target=tgt, batch=cfg.batch,
                           lr=cfg.lr, record_every=s.record_every, n_eval=cfg.n_eval)
            for name in DEMO_ARMS}


def demo_summary(demo: dict) -> dict:
    """:func:`annealvi_lib.metrics.run_summary` of each demo arm's final samples (one run each)."""
    return {k: run_summary(v[2].proj[None], v[2].log_w[None]) for k, v in demo.items()}


# --------------------------------------------------------------------------------------------
# the grids
# --------------------------------------------------------------------------------------------

class FlowGrid(NamedTuple):
    """The RealNVP grid as arrays: rows ``B`` (beta_i), columns ``T`` (t0).

    ``pc``, ``lo``, ``hi``: collapse probability and Wilson 95% bounds, shape (len(B), len(T));
    ``counts``: ``{(beta_i, t0): (k, n)}``; ``runs``: the per-run rows; ``n_failed``: runs
    flagged failed over the grid; ``provenance``: the archive's provenance, or ``None`` when the
    grid was computed (or loaded from the results cache) here; ``seconds``: wall time of loading
    or computing it.
    """

    B: np.ndarray
    T: np.ndarray
    pc: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    counts: dict
    runs: list
    n_failed: int
    provenance: dict | None
    seconds: float


def flow_grid(cfg: RealNVPGridConfig, progress: bool | None = None,
              workers: int = 1) -> FlowGrid:
    """The RealNVP grid of ``cfg``: from the archive ``data/GRID_ARCHIVE`` when it holds this
    configuration, else computed (cached); collapse by the paper's criterion, std < 1.6."""
    t = time.perf_counter()
    cells, runs, prov = flow_grid_rows(cfg, workers=workers, progress=progress)
    seconds = time.perf_counter() - t
    B = np.array(cfg.beta_is)
    T = np.array(cfg.t0s)
    summ = {(r["beta_i"], r["t0"]): r for r in cells}
    pc, lo, hi = (np.array([[summ[(float(b), float(t))][f] for t in T] for b in B])
                  for f in ("p_collapse", "ci_low", "ci_high"))
    counts = {k: (int(r["n_collapsed"]), int(r["n_runs"] - r["n_failed"])) for k, r in summ.items()}
    n_failed = int(sum(r["n_failed"] for r in cells))
    return FlowGrid(B, T, pc, lo, hi, counts, runs, n_failed, prov, seconds)


def gmm_comparison_config(cfg: RealNVPGridConfig, d: int | None = None) -> GMMGridConfig:
    """The GMM-student grid on the same (beta_i, t0) cells, target, batch, seeds and run length
    as the RealNVP grid (JKO step from :class:`~annealvi_lib.config.Problem`, exact sampler),
    at dimension ``d`` (default ``cfg.d``)."""
    d = cfg.d if d is None else int(d)
    return GMMGridConfig(problem=Problem(d=d, R=cfg.R, w_star=cfg.w_star, batch=cfg.batch),
                         log10_beta_r2=tuple(float(np.log10(b * cfg.R**2)) for b in cfg.beta_is),
                         t0s=cfg.t0s, n_seeds=cfg.n_seeds, n_iter_extra=cfg.n_iter_extra,
                         sampler="exact", seed=cfg.seed)


def _gmm_lookup(summary) -> dict:
    # beta_i = 10^k / R^2 with k = log10(beta_i R^2) round-trips only to ~1e-15
    return {(round(r["beta_i"], 10), r["t0"]): r for r in summary}


def _gmm_grid_rows(cfg: RealNVPGridConfig, workers: int = 1, progress: bool | None = None,
                   cache=None) -> list[dict]:
    """The GMM student on the RealNVP grid's cells: one row per cell (``beta_i, t0, n_runs,
    n_collapsed, n_failed, p_collapse, ci_low, ci_high``)."""
    res = run_grid("gmm", gmm_comparison_config(cfg), workers=workers, progress=progress,
                   cache=cache)
    return _cell_rows(res)


def _gmm_trend_rows(cfg: RealNVPGridConfig, workers: int = 1, progress: bool | None = None,
                    cache=None) -> list[dict]:
    """The GMM student on the trend cells at every d of the trend: rows as
    :func:`_gmm_grid_rows` with ``d``."""
    rows = []
    for d in cfg.trend_dims:
        g = dataclasses.replace(gmm_comparison_config(cfg, d), n_seeds=cfg.trend_seeds)
        res = run_grid("gmm", g, cells=[(float(b), float(t)) for b, t in cfg.trend_cells],
                       workers=workers, progress=progress, cache=cache)
        rows += _cell_rows(res, d=int(d))
    return rows


def gmm_comparison_cells(cfg: RealNVPGridConfig, tables: dict | None = None,
                         progress: bool | None = None):
    """The GMM student on the RealNVP grid: ``(p, lo, hi, seconds)``, the collapse probability
    and its Wilson 95% interval, each shaped ``(len(B), len(T))`` with rows and columns as in
    :class:`FlowGrid`; from the side-study ``tables`` (:func:`load_studies`) when given, else
    computed (cached)."""
    t = time.perf_counter()
    rows = tables["gmm_cells.csv"] if tables is not None else _gmm_grid_rows(cfg, progress=progress)
    gsum = _gmm_lookup(rows)
    p, lo, hi = (np.array([[gsum[(round(float(b), 10), float(t))][key] for t in cfg.t0s]
                           for b in cfg.beta_is]) for key in ("p_collapse", "ci_low", "ci_high"))
    return p, lo, hi, time.perf_counter() - t


def gmm_trend(cfg: RealNVPGridConfig, tables: dict | None = None,
              progress: bool | None = None) -> list[dict]:
    """The GMM student on the trend cells at every d of the trend (exact sampler, the flow's
    batch, ``cfg.trend_seeds`` runs): rows ``d, beta_i, t0, p, lo, hi, n``; from the side-study
    ``tables`` when given, else computed (cached)."""
    raw = (tables["gmm_trend_cells.csv"] if tables is not None
           else _gmm_trend_rows(cfg, progress=progress))
    rows = []
    for d in cfg.trend_dims:
        look = _gmm_lookup([r for r in raw if int(r["d"]) == int(d)])
        for b, t in cfg.trend_cells:
            r = look[(round(float(b), 10), float(t))]
            rows.append({"d": int(d), "beta_i": float(b), "t0": float(t),
                         "p": float(r["p_collapse"]), "lo": float(r["ci_low"]),
                         "hi": float(r["ci_high"]), "n": int(r["n_runs"] - r["n_failed"])})
    return rows


def trend_rows(tables: dict, criterion: tuple, w_star: float) -> list[dict]:
    """The flow's trend cells from the side-study tables: rows ``d, beta_i, t0, k, n, p, lo,
    hi`` under ``criterion``."""
    runs = tables["trend_runs.csv"]
    out = []
    for d in sorted({int(r["d"]) for r in runs}):
        counts = cell_counts([r for r in runs if int(r["d"]) == d], criterion, w_star)
        for (b, t), (k, n) in counts.items():
            lo, hi = wilson_interval(k, max(n, 1))
            out.append({"d": d, "beta_i": b, "t0": t, "k": k, "n": n,
                        "p": k / n if n else float("nan"), "lo": float(lo), "hi": float(hi)})
    return out


def compare_rows(tables: dict, criterion: tuple, w_star: float) -> list[dict]:
    """The comparisons: one row per (cell, arm) with ``beta_i, t0, arm, k, n, p, lo, hi`` and,
    for the arms other than the base, ``diff, diff_lo, diff_hi`` (arm minus base, Newcombe 95%
    interval)."""
    from ..metrics import difference_interval

    runs = tables["compare_runs.csv"]
    by_arm = {a: cell_counts([r for r in runs if r["arm"] == a], criterion, w_star)
              for a, _, _ in COMPARE_ARMS}
    base = COMPARE_ARMS[0][0]
    out = []
    for cell in by_arm[base]:
        kb, nb = by_arm[base][cell]
        for arm, _, _ in COMPARE_ARMS:
            k, n = by_arm[arm][cell]
            lo, hi = wilson_interval(k, n)
            row = {"beta_i": cell[0], "t0": cell[1], "arm": arm, "k": k, "n": n, "p": k / n,
                   "lo": float(lo), "hi": float(hi)}
            if arm != base:
                dd, dl, dh = difference_interval(k, n, kb, nb)
                row.update(diff=float(dd), diff_lo=float(dl), diff_hi=float(dh))
            out.append(row)
    return out


def compare_verdict(rows: list[dict], arm: str) -> str:
    """One Markdown sentence on ``arm`` against the base arm, from the Newcombe intervals."""
    rs = [r for r in rows if r["arm"] == arm]
    parts = [f"β_i = {r['beta_i']:.3g}, t0 = {r['t0']:.0f}: {r['diff']:+.2f} "
             f"[{r['diff_lo']:+.2f}, {r['diff_hi']:+.2f}]" for r in rs]
    changed = [r for r in rs if r["diff_lo"] > 0 or r["diff_hi"] < 0]
    small = [r for r in rs if -SMALL_DIFFERENCE < r["diff_lo"] and r["diff_hi"] < SMALL_DIFFERENCE]
    n = min(r["n"] for r in rs)
    if changed:
        verdict = (f"the change is beyond its interval in {len(changed)} of {len(rs)} cells: "
                   f"{arm} changes the collapse probability there")
    elif len(small) == len(rs):
        verdict = (f"every interval lies within ±{SMALL_DIFFERENCE:g}: with {n} runs per arm, "
                   f"{arm} changes the collapse probability by less than {SMALL_DIFFERENCE:g} "
                   "in these cells")
    else:
        verdict = (f"no interval excludes zero, but not every one excludes a change of "
                   f"{SMALL_DIFFERENCE:g}: with {n} runs per arm the effect is not resolved")
    return f"P({arm}) − P(base): " + "; ".join(parts) + f" — {verdict}."


# --------------------------------------------------------------------------------------------
# benchmark and archives
# --------------------------------------------------------------------------------------------

def benchmark_rows() -> tuple[list[dict], str] | None:
    """RealNVP training throughput rows from ``benchmarks/bench_realnvp.py``'s JSON (see
    :func:`annealvi_lib.paths.load_benchmark`). Returns ``(rows, source)`` or ``None``."""
    from ..paths import load_benchmark

    loaded = load_benchmark("bench_realnvp")
    return None if loaded is None else (loaded[0]["rows"], loaded[1])


# --------------------------------------------------------------------------------------------
# archives: the grid and the side studies (too long for a CPU book build)
# --------------------------------------------------------------------------------------------

#: Archive folders under ``data/`` (``python -m annealvi_lib realnvp-archive grid|studies``).
GRID_ARCHIVE = "realnvp_grid"
STUDIES_ARCHIVE = "realnvp_studies"
#: fields of RealNVPGridConfig that only the side studies read
_SIDE_FIELDS = ("trend_dims", "trend_cells", "trend_seeds", "compare_seeds")


def grid_archive_config(cfg: RealNVPGridConfig) -> dict:
    """What the grid's numbers depend on: the configuration minus the side-study settings
    (compared with an archive's provenance)."""
    d = dataclasses.asdict(cfg)
    for k in _SIDE_FIELDS:
        d.pop(k)
    return json_roundtrip({"realnvp_grid": d, "beta_is": list(cfg.beta_is)})


#: per-run columns of the archives (beside the cell and replicate)
_RUN_COLUMNS = ("collapsed", "failed", "proj_std", "proj_mean", "mass_plus", "ess", "kl")


def _run_rows(res, **label) -> list[dict]:
    return [{**label, "beta_i": r["beta_i"], "t0": r["t0"], "replicate": r["replicate"],
             **{k: r[k] for k in _RUN_COLUMNS}} for r in res.runs]


def _cell_rows(res, **label) -> list[dict]:
    return [{**label, **{k: r[k] for k in ("beta_i", "t0", "n_runs", "n_collapsed", "n_failed",
                                           "p_collapse", "ci_low", "ci_high")}}
            for r in res.summary]


def write_grid_archive(cfg: RealNVPGridConfig, folder, workers: int = 1, command: str = "",
                       progress: bool | None = None):
    """Run the grid of ``cfg`` from scratch (an empty temporary cache, so every run is computed
    by this code and the runtime is the computation's) and archive it in ``folder``:
    ``realnvp_cells.csv`` (one row per cell), ``realnvp_runs.csv`` (one row per run) and
    ``provenance.json``."""
    import tempfile

    from ..archive import current_commit, write_archive

    commit = current_commit()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_realnvp_") as fresh:
        res = run_grid("realnvp", cfg, workers=workers, progress=progress, cache=fresh)
    return write_archive(folder, {"realnvp_cells.csv": _cell_rows(res),
                                  "realnvp_runs.csv": _run_rows(res)},
                         grid_archive_config(cfg), time.perf_counter() - t, command, commit)


def _numeric_rows(rows: list[dict], keep_str=()) -> list[dict]:
    """CSV rows with every value but ``keep_str`` as a float (ints stay exact in float64)."""
    return [{k: (v if k in keep_str else float(v)) for k, v in r.items()} for r in rows]


def load_grid_archive(cfg: RealNVPGridConfig):
    """``(cell rows, run rows, provenance)`` of ``data/GRID_ARCHIVE`` when its configuration is
    ``cfg``'s, else ``None``; values as floats."""
    from ..archive import data_dir, read_archive

    got = read_archive(data_dir(GRID_ARCHIVE))
    if got is None or got[1]["config"] != grid_archive_config(cfg):
        return None
    tables, prov = got
    return (_numeric_rows(tables["realnvp_cells.csv"]), _numeric_rows(tables["realnvp_runs.csv"]),
            prov)


def studies_config(cfg: RealNVPGridConfig, cells: list[tuple[float, float]]) -> dict:
    """What the side studies' numbers depend on: the grid configuration, the trend settings and
    the comparison cells."""
    return json_roundtrip({"realnvp_grid": dataclasses.asdict(cfg), "compare_cells": cells,
                           "arms": [list(a) for a in COMPARE_ARMS]})


#: arms of the comparisons: (name, field of RealNVPGridConfig, value); the first is the base
COMPARE_ARMS = (("base", "norm", "beta"), ("batch norm", "norm", "batch"),
                ("torch init", "init", "torch"))


def compare_cells(cells: list[dict]) -> list[tuple[float, float]]:
    """The two cells of the powered comparisons, chosen from the grid's cell rows by a fixed
    rule: no annealing at the shortest t0, and the annealed cell whose collapse probability is
    closest to 1/2 (where a change of the probability is easiest to detect; ties: the longer
    t0, then the hotter start)."""
    t_min = min(r["t0"] for r in cells)
    ann = [r for r in cells if r["beta_i"] < 1]
    best = min(ann, key=lambda r: (abs(r["p_collapse"] - 0.5), -r["t0"], r["beta_i"]))
    return [(1.0, float(t_min)), (float(best["beta_i"]), float(best["t0"]))]


def run_studies(cfg: RealNVPGridConfig, cells: list[tuple[float, float]], workers: int = 1,
                progress: bool | None = None, cache=None) -> dict[str, list[dict]]:
    """The side studies: the dimension trend (``cfg.trend_cells`` at every ``cfg.trend_dims``,
    ``cfg.trend_seeds`` runs each) and the comparisons (every arm of :data:`COMPARE_ARMS` on
    ``cells``, ``cfg.compare_seeds`` runs each), and the GMM student on the grid's cells and on
    the trend cells (:func:`gmm_comparison_config`). Runs of a cell use the keys of the grid's
    cell (replicates 0, 1, ...), so the arms of a comparison are paired.

    Returns the tables ``trend_cells.csv``, ``trend_runs.csv``, ``compare_cells.csv``,
    ``compare_runs.csv`` (rows labelled by ``d`` or ``arm``), ``gmm_cells.csv`` and
    ``gmm_trend_cells.csv``.
    """
    out = {"trend_cells.csv": [], "trend_runs.csv": [], "compare_cells.csv": [],
           "compare_runs.csv": [],
           "gmm_cells.csv": _gmm_grid_rows(cfg, workers=workers, progress=progress, cache=cache),
           "gmm_trend_cells.csv": _gmm_trend_rows(cfg, workers=workers, progress=progress,
                                                  cache=cache)}
    for d in cfg.trend_dims:
        c = dataclasses.replace(cfg, d=int(d), n_seeds=cfg.trend_seeds)
        res = run_grid("realnvp", c, cells=list(cfg.trend_cells), workers=workers,
                       progress=progress, cache=cache)
        out["trend_cells.csv"] += _cell_rows(res, d=int(d))
        out["trend_runs.csv"] += _run_rows(res, d=int(d))
    for arm, field, value in COMPARE_ARMS:
        c = dataclasses.replace(cfg, n_seeds=cfg.compare_seeds, **{field: value})
        res = run_grid("realnvp", c, cells=cells, workers=workers, progress=progress,
                       cache=cache)
        out["compare_cells.csv"] += _cell_rows(res, arm=arm)
        out["compare_runs.csv"] += _run_rows(res, arm=arm)
    return out


def write_studies_archive(cfg: RealNVPGridConfig, folder, workers: int = 1, command: str = "",
                          progress: bool | None = None):
    """Run the side studies from scratch and archive them in ``folder``. The comparison cells
    come from the grid (:func:`compare_cells` of the grid archive when it matches ``cfg``,
    else of the grid computed into the results cache)."""
    import tempfile

    from ..archive import current_commit, write_archive

    commit = current_commit()
    cells = compare_cells(flow_grid_rows(cfg, workers=workers)[0])
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_realnvp_side_") as fresh:
        tables = run_studies(cfg, cells, workers=workers, progress=progress, cache=fresh)
    return write_archive(folder, tables, studies_config(cfg, cells), time.perf_counter() - t,
                         command, commit)


def flow_grid_rows(cfg: RealNVPGridConfig, workers: int = 1, progress: bool | None = None):
    """``(cell rows, run rows, provenance or None)`` of the grid of ``cfg``: from the archive
    ``data/GRID_ARCHIVE`` when it holds this configuration, else computed (cached)."""
    got = load_grid_archive(cfg)
    if got is not None:
        return got
    res = run_grid("realnvp", cfg, workers=workers, progress=progress)
    return (_numeric_rows(_cell_rows(res)), _numeric_rows(_run_rows(res)), None)


def load_studies(cfg: RealNVPGridConfig, workers: int = 1, progress: bool | None = None):
    """``(tables, provenance or None)`` of the side studies: from ``data/STUDIES_ARCHIVE`` when
    it holds this configuration, else computed (cached)."""
    from ..archive import data_dir, read_archive

    cells = compare_cells(flow_grid_rows(cfg, workers=workers)[0])
    got = read_archive(data_dir(STUDIES_ARCHIVE))
    if got is not None and got[1]["config"] == studies_config(cfg, cells):
        tables, prov = got
    else:
        tables, prov = run_studies(cfg, cells, workers=workers, progress=progress), None
    # computed or read back, the same plain numbers
    return {k: _numeric_rows(v, keep_str=("arm",)) for k, v in tables.items()}, prov


# --------------------------------------------------------------------------------------------
# collapse criteria and the paper's claims, decided from the intervals
# --------------------------------------------------------------------------------------------

