"""Monte-Carlo collapse grids over (beta_i, t0): run, cache, shard, merge, write CSV.

A *grid* is the product of initial inverse temperatures ``beta_i`` and annealing times ``t0``
(exponential schedule, ``n_iter = t0 + n_iter_extra`` steps), with ``n_seeds`` replicates per
cell. Each run's key is derived from (master seed, study, beta_i, t0, replicate)
(:mod:`annealvi_lib.seeding`), so results never depend on chunking, sharding or ordering.

Caching: every cell is stored as ``<cache>/<study>/<config-hash>/cell_<id>.npz``, written
atomically (temporary file + rename). The hash covers the study, the full configuration, the
sampler and the library version, so a changed setting never reuses stale results; a cell file
that cannot be read or has the wrong content is recomputed. An interrupted run resumes from the
cells already on disk. ``shard=(k, n)`` runs the cells ``i`` with ``i % n == k``; shards share
the cache, and their CSVs merge (:func:`merge_grid_csvs`) to the unsharded result.

Outputs (:func:`write_grid_csv`): ``<study>_grid.csv`` with columns
``beta_i,t0,n_runs,n_collapsed,n_failed,p_collapse,ci_low,ci_high`` (Wilson 95% on the runs that
did not fail; ``p_collapse = n_collapsed / (n_runs - n_failed)``) and ``<study>_runs.csv`` with the
final statistics of every run.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import __version__
from ._rng import fast_threefry
from .cache import load_npz, save_npz_atomic, source_hash
from ._validate import check_choice, check_int_at_least
from .config import GMMGridConfig, RealNVPGridConfig
from .paths import cache_dir as default_cache_dir
from .schedules import exp_schedule
from .seeding import cell_id, run_keys
from .metrics import wilson_interval
from .student import Hyper, classify_collapse

__all__ = [
    "STUDIES",
    "GRID_COLUMNS",
    "GridResult",
    "parse_shard",
    "grid_cells",
    "config_hash",
    "run_gmm_group",
    "run_grid",
    "summarise_cell",
    "write_grid_csv",
    "read_grid_csv",
    "merge_grid_csvs",
]

STUDIES = ("gmm", "realnvp")
GRID_COLUMNS = ("beta_i", "t0", "n_runs", "n_collapsed", "n_failed", "p_collapse", "ci_low",
                "ci_high")
GMM_RUN_FIELDS = ("collapsed", "failed", "m1", "m2", "s", "var1", "var2")


class GridResult(NamedTuple):
    """Summary rows (one dict per cell, keys :data:`GRID_COLUMNS`) and per-run rows."""

    summary: list
    runs: list


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"k/n"`` (0 <= k < n) into ``(k, n)``; ``None`` passes through."""
    if text is None:
        return None
    try:
        k_str, n_str = str(text).split("/")
        k, n = int(k_str), int(n_str)
    except ValueError:
        raise ValueError(f"shard must look like k/n with integers 0 <= k < n, got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"shard must look like k/n with integers 0 <= k < n, got {text!r}")
    return k, n


def grid_cells(cfg) -> list[tuple[float, float]]:
    """All ``(beta_i, t0)`` cells of a grid configuration, beta_i-major order."""
    return [(float(b), float(t)) for b in cfg.beta_is for t in cfg.t0s]


def config_hash(study: str, cfg, **extra) -> str:
    """Hash of the study, the configuration (minus the cell lists, so that a cell is reused when
    the grid grows), extra settings and the library version."""
    d = dataclasses.asdict(cfg)
    # cell lists, replicate counts and the settings of other experiments do not change a cell
    for k in ("log10_beta_r2", "log10_beta_9", "t0s", "include_beta_one", "n_seeds",
              "validation_cells", "validation_seeds", "sensitivity_cells", "sensitivity_batches",
              "sensitivity_extras", "sensitivity_seeds", "ode_samples", "guidance_p",
              "guidance_seeds"):
        d.pop(k, None)
    payload = json.dumps({"study": study, "cfg": d, "extra": extra, "version": __version__,
                          "source": _source_hash(study)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


_SOURCES = {"gmm": ("student.py", "reduced.py", "targets.py", "schedules.py", "seeding.py"),
            "realnvp": ("realnvp.py", "metrics.py", "targets.py", "schedules.py", "seeding.py")}


def _source_hash(study: str) -> str:
    """Hash of the library modules a study's runs depend on, so that a code change (even
    without a version bump) never reuses stale cached results."""
    return source_hash(*_SOURCES[study])


# --------------------------------------------------------------------------------------------
# GMM cells: one compiled function per n_iter; beta_i (and t0) are traced, seeds are vmapped.
# --------------------------------------------------------------------------------------------

def _gmm_runs(keys, beta_is, t0s, *, target_d, R, w_star, n_iter, hyper, sampler):
    """Final statistics of many runs (one per key) of the GMM student; vmapped, jit-compiled."""
    from . import reduced, student   # local import: reduced imports student
    from .targets import Target

    mu_star = jnp.zeros(target_d).at[0].set(1.0)
    target = Target(mu_star=mu_star, R=R, w_star=w_star)

    def one(key, beta_i, t0):
        k_init, k_noise = jax.random.split(key)
        schedule = partial(exp_schedule, beta_i=beta_i, t0=t0)
        var0 = 1.0 / beta_i
        if sampler == "fast":
            state0 = reduced.init_reduced(k_init, target, var0)
            final, _ = reduced._simulate_reduced(k_noise, state0, target, schedule, n_iter,
                                                 hyper, False)
            return final.m[..., 0], final.m[..., 1], final.s, final.var[..., 0], final.var[..., 1]
        state0 = student.init_student(k_init, target_d, R, var0)
        final, _ = student._simulate(k_noise, state0, target, schedule, n_iter, hyper, False)
        m1, m2, s = student.summary_stats(final, target)
        return m1, m2, s, final.var[0], final.var[1]

    return jax.vmap(one)(keys, beta_is, t0s)


_gmm_runs_jit = jax.jit(_gmm_runs, static_argnames=("target_d", "R", "w_star", "n_iter",
                                                      "hyper", "sampler"))


def run_gmm_group(cfg: GMMGridConfig, cells: Sequence[tuple[float, float]], master_seed: int,
                  sampler: str, chunk: int, on_chunk: Callable[[int], None] | None = None):
    """Run all replicates of several cells sharing one ``t0`` (hence one ``n_iter``).

    Runs are processed in fixed-size chunks (the last one padded) so that one compiled function
    serves every chunk. Returns ``{cell: dict of per-run arrays}``.
    """
    t0_values = {t0 for _, t0 in cells}
    if len(t0_values) != 1:
        raise ValueError("run_gmm_group needs cells that share one t0")
    t0 = t0_values.pop()
    n_iter = int(round(t0)) + cfg.n_iter_extra
    p = cfg.problem
    hyper = Hyper(lr=p.lr, batch=p.batch)
    reps = np.arange(cfg.n_seeds)
    keys = jnp.concatenate([run_keys(master_seed, ("gmm", b, t), reps) for b, t in cells])
    betas = np.repeat([b for b, _ in cells], cfg.n_seeds).astype(np.float32)
    t0s = np.full(betas.shape, t0, dtype=np.float32)
    n = betas.size
    chunk = max(1, min(chunk, n))
    outs = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        idx = np.arange(start, start + chunk).clip(max=n - 1)   # pad with the last run
        with fast_threefry():
            res = _gmm_runs_jit(keys[idx], jnp.asarray(betas[idx]), jnp.asarray(t0s[idx]),
                                target_d=p.d, R=p.R, w_star=p.w_star, n_iter=n_iter, hyper=hyper,
                                sampler=sampler)
        outs.append(np.stack([np.asarray(a) for a in res], axis=-1)[: stop - start])
        if on_chunk is not None:
            on_chunk((stop - start) * n_iter)
    stats = np.concatenate(outs).reshape(len(cells), cfg.n_seeds, 5)
    result = {}
    for i, cell in enumerate(cells):
        m1, m2, s, v1, v2 = (stats[i, :, j] for j in range(5))
        collapsed, failed = (np.asarray(a) for a in classify_collapse(s))
        result[cell] = {"collapsed": collapsed, "failed": failed, "m1": m1, "m2": m2, "s": s,
                        "var1": v1, "var2": v2}
    return result


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------

def _cell_path(root: Path, cell) -> Path:
    return root / f"cell_{cell_id(*cell):010d}.npz"


def _load_cell(path: Path, n_seeds: int, fields: Iterable[str]):
    """Load a cached cell; ``None`` if missing, unreadable or inconsistent (then it is redone)."""
    data = load_npz(path)
    if data is None:
        return None
    if not set(fields) <= set(data) or any(data[k].shape != (n_seeds,) for k in fields):
        return None
    return data


def _save_cell(path: Path, data: dict) -> None:
    """Atomic write: a reader never sees a half-written file."""
    save_npz_atomic(path, data)


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------

def summarise_cell(beta_i: float, t0: float, collapsed, failed) -> dict:
    """Summary row of one cell with a Wilson 95% interval on the non-failed runs."""
    collapsed = np.asarray(collapsed, bool)
    failed = np.asarray(failed, bool)
    n_runs = int(collapsed.size)
    n_failed = int(failed.sum())
    n_ok = n_runs - n_failed
    k = int((collapsed & ~failed).sum())
    lo, hi = wilson_interval(k, n_ok)
    p = k / n_ok if n_ok else float("nan")
    return {"beta_i": float(beta_i), "t0": float(t0), "n_runs": n_runs, "n_collapsed": k,
            "n_failed": n_failed, "p_collapse": p, "ci_low": float(lo), "ci_high": float(hi)}


def run_grid(study: str, cfg: GMMGridConfig | RealNVPGridConfig, *, sampler: str | None = None,
             shard: tuple[int, int] | None = None, cache: str | os.PathLike | None = None,
             master_seed: int | None = None, progress: bool | None = None,
             chunk: int | None = None, workers: int = 1,
             cells: Sequence[tuple[float, float]] | None = None) -> GridResult:
    """Run (or load from cache) every cell of a grid, or of one shard of it.

    Args:
      study: ``"gmm"`` or ``"realnvp"``.
      cfg: the grid configuration (a preset's ``gmm_grid`` or ``realnvp_grid``, possibly with
        fields replaced by CLI options).
      sampler: GMM only, ``"fast"`` (O(B + d), default from cfg) or ``"exact"`` (O(B d)).
      shard: ``(k, n)`` to run only cells ``i % n == k``.
      cache: cache folder (default :func:`annealvi_lib.paths.cache_dir`).
      master_seed: default ``cfg.seed``.
      progress: show a tqdm bar (default: only when attached to a terminal or a notebook).
      chunk: runs per compiled call (default 64 for ``fast``, 1 for ``exact``, which is
        memory-bound: measured fastest).
      cells: explicit ``(beta_i, t0)`` cells to run instead of the product grid of ``cfg``
        (e.g. a few scattered validation cells; the cache is shared with the product grid).
      workers: local worker processes (each pinned to one core, single-threaded XLA, running
        one shard of the missing cells into the shared cache). On a 2-core CPU two workers beat
        one process using both cores for these small, latency-bound kernels.
    Returns:
      :class:`GridResult` with one summary row per cell (in grid order) and one row per run.
    """
    check_choice("study", study, STUDIES)
    master_seed = cfg.seed if master_seed is None else check_int_at_least("seed", master_seed, 0)
    cells = grid_cells(cfg) if cells is None else [(float(b), float(t)) for b, t in cells]
    if shard is not None:
        k, n = shard
        cells = [c for i, c in enumerate(cells) if i % n == k]
    if study == "gmm":
        sampler = check_choice("sampler", sampler or cfg.sampler, ("exact", "fast"))
        fields = GMM_RUN_FIELDS
        extra = {"sampler": sampler}
    else:
        from .realnvp import REALNVP_RUN_FIELDS as fields  # noqa: N811
        extra = {}
    root = Path(cache or default_cache_dir()) / study / (
        config_hash(study, cfg, **extra) + f"_seed{master_seed}_n{cfg.n_seeds}")
    results = {}
    todo = []
    for cell in cells:
        data = _load_cell(_cell_path(root, cell), cfg.n_seeds, fields)
        if data is None:
            todo.append(cell)
        else:
            results[cell] = data
    workers = check_int_at_least("workers", workers, 1)
    # fewer missing cells than workers: one in-process run using every core is faster
    if workers > 1 and len(todo) >= workers:
        _run_in_workers(study, cfg, sampler, todo, root, master_seed, chunk, workers, progress)
        for cell in todo:
            data = _load_cell(_cell_path(root, cell), cfg.n_seeds, fields)
            if data is None:
                raise RuntimeError(f"worker did not produce cell {cell} in {root}")
            results[cell] = data
        todo = []
    bar = _progress_bar(study, cfg, todo, progress)
    try:
        if study == "gmm":
            chunk = chunk or (64 if sampler == "fast" else 1)
            for t0 in sorted({t for _, t in todo}):
                group = [c for c in todo if c[1] == t0]
                out = run_gmm_group(cfg, group, master_seed, sampler, chunk,
                                    on_chunk=bar.update if bar else None)
                for cell, data in out.items():
                    _save_cell(_cell_path(root, cell), data)
                    results[cell] = data
        else:
            from .realnvp import run_realnvp_cell

            for cell in todo:
                data = run_realnvp_cell(cfg, cell[0], cell[1], np.arange(cfg.n_seeds), master_seed)
                data = {k: np.asarray(v) for k, v in data.items()}
                _save_cell(_cell_path(root, cell), data)
                results[cell] = data
                if bar:
                    bar.update(cfg.n_seeds * (int(round(cell[1])) + cfg.n_iter_extra))
    finally:
        if bar:
            bar.close()
    summary, runs = [], []
    for cell in cells:
        data = results[cell]
        summary.append(summarise_cell(cell[0], cell[1], data["collapsed"], data["failed"]))
        for r in range(cfg.n_seeds):
            row = {"beta_i": cell[0], "t0": cell[1], "replicate": r}
            row.update({k: _scalar(data[k][r]) for k in fields})
            runs.append(row)
    return GridResult(summary, runs)


def _worker_main(study, cfg, sampler, cells, root, master_seed, chunk, core):
    """Entry point of one worker process: compute ``cells`` into the cache folder ``root``."""
    try:
        os.sched_setaffinity(0, {core % os.cpu_count()})
    except (AttributeError, OSError):   # not Linux: no pinning
        pass
    for t0 in sorted({t for _, t in cells}):
        group = [c for c in cells if c[1] == t0]
        if study == "gmm":
            out = run_gmm_group(cfg, group, master_seed, sampler,
                                chunk or (64 if sampler == "fast" else 1))
        else:
            from .realnvp import run_realnvp_cell

            out = {c: run_realnvp_cell(cfg, c[0], c[1], np.arange(cfg.n_seeds), master_seed)
                   for c in group}
        for cell, data in out.items():
            _save_cell(_cell_path(root, cell), {k: np.asarray(v) for k, v in data.items()})


def _run_in_workers(study, cfg, sampler, todo, root, master_seed, chunk, workers, progress):
    """Split the missing cells over ``workers`` spawned processes and wait, showing progress by
    polling the cache folder."""
    import multiprocessing as mp
    import time

    ctx = mp.get_context("spawn")
    # children read XLA_FLAGS when their JAX backend starts: one thread each
    old = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = ((old + " ") if old else "") + (
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    procs = []
    try:
        for k in range(workers):
            part = todo[k::workers]
            if part:
                p = ctx.Process(target=_worker_main, args=(study, cfg, sampler, part, root,
                                                           master_seed, chunk, k))
                p.start()
                procs.append(p)
    finally:
        if old is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = old
    bar = _progress_bar(study, cfg, todo, progress)
    steps = {c: cfg.n_seeds * (int(round(c[1])) + cfg.n_iter_extra) for c in todo}
    done = set()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            new = {c for c in todo if c not in done and _cell_path(root, c).exists()}
            if bar:
                bar.update(sum(steps[c] for c in new))
            done |= new
    finally:
        if bar:
            bar.close()
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"grid worker processes failed with exit codes {bad}")


def _scalar(v):
    v = np.asarray(v).item()
    return int(v) if isinstance(v, (bool, np.bool_)) else v


def _progress_bar(study, cfg, todo, progress):
    if not todo:
        return None
    from tqdm.auto import tqdm

    total = sum(cfg.n_seeds * (int(round(t0)) + cfg.n_iter_extra) for _, t0 in todo)
    disable = None if progress is None else not progress   # None: tqdm decides (non-tty: quiet)
    return tqdm(total=total, desc=f"{study} grid ({len(todo)} cells)", unit="seed-step",
                unit_scale=True, disable=disable, mininterval=2.0)


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------

def write_grid_csv(result: GridResult, out_dir: str | os.PathLike, study: str) -> tuple[Path, Path]:
    """Write ``<study>_grid.csv`` and ``<study>_runs.csv`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid_path = out / f"{study}_grid.csv"
    runs_path = out / f"{study}_runs.csv"
    _write_rows(grid_path, GRID_COLUMNS, result.summary)
    if result.runs:
        _write_rows(runs_path, tuple(result.runs[0].keys()), result.runs)
    return grid_path, runs_path


def _write_rows(path: Path, columns, rows) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.csv")
    with os.fdopen(fd, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        for row in rows:
            w.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


def read_grid_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``*_grid.csv`` into a dict of column arrays."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or tuple(rows[0].keys()) != GRID_COLUMNS:
        raise ValueError(f"{path} is not a grid CSV with columns {','.join(GRID_COLUMNS)}")
    return {c: np.array([float(r[c]) for r in rows]) for c in GRID_COLUMNS}


def merge_grid_csvs(paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Merge shard CSVs (``*_grid.csv`` or ``*_runs.csv``) into one, sorted by cell.

    Identical duplicate rows are kept once; conflicting rows for the same cell raise.
    """
    rows, header = {}, None
    for p in paths:
        with open(p, newline="") as fh:
            reader = csv.DictReader(fh)
            if header is None:
                header = reader.fieldnames
            elif reader.fieldnames != header:
                raise ValueError(f"{p} has columns {reader.fieldnames}, expected {header}")
            for r in reader:
                key = (float(r["beta_i"]), float(r["t0"]), int(r.get("replicate", -1) or -1))
                if key in rows and rows[key] != r:
                    raise ValueError(f"conflicting rows for cell {key} in {p}")
                rows[key] = r
    if header is None:
        raise ValueError("no CSV files to merge")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        for key in sorted(rows):
            w.writerow(rows[key])
    return out
