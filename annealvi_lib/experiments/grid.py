"""Monte-Carlo collapse grids over (beta_i, t0): run, cache and shard (the CSV files, written
and merged by :mod:`annealvi_lib.experiments.grid_csv`).

A *grid* is the product of initial inverse temperatures ``beta_i`` and annealing times ``t0``
(the exponential schedule unless ``cfg.schedule`` names another family; ``n_iter = t0 +
n_iter_extra`` steps), with ``n_seeds`` replicates per cell. Each run's key is derived from (master seed, study, beta_i, t0, replicate)
(:mod:`annealvi_lib.seeding`), so results never depend on chunking, sharding or ordering.

Bit-identical by construction: every run goes through one compiled program of a fixed shape,
whatever the chunking, sharding or worker count. A cell's replicates are split into blocks of
:func:`lanes` runs (a function of the number of seeds and the sampler only), the last block padded
by repeating its last replicate, and every block holds replicates of one cell only; so the inputs
of every compiled call are a function of (cell, block) alone and the per-run numbers cannot
depend on how cells are grouped into shards or workers. Worker processes run the same program as
the parent (same flags except the thread count; XLA's CPU threads split independent output
elements, not reductions, and the tests compare the two paths bit for bit).

Caching: every cell is stored as ``<cache>/<study>/<config-hash>/cell_<id>.npz``, written
atomically (temporary file + rename), together with its identity (study, configuration id,
beta_i, t0, seeds); a file whose identity differs (e.g. copied over another cell's name) is
treated as corrupt and recomputed. The hash covers the study, the full configuration, the
sampler, the library version and the location-free source of the code the runs execute
(:data:`_SOURCES`, :data:`_RUNNER_CODE`), so a changed setting or code never reuses stale results; a cell file
that cannot be read or has the wrong content is recomputed. An interrupted run resumes from the
cells already on disk. ``shard=(k, n)`` runs the cells ``i`` with ``i % n == k``; shards share
the cache, and their CSVs merge (:func:`~annealvi_lib.experiments.grid_csv.merge_grid_csvs`) to the unsharded result.

Outputs (:func:`~annealvi_lib.experiments.grid_csv.write_grid_csv`): ``<study>_grid.csv`` with columns
``beta_i,t0,n_runs,n_collapsed,n_failed,p_collapse,ci_low,ci_high,study,grid_id`` (Wilson 95% on
the runs that did not fail; ``p_collapse = n_collapsed / (n_runs - n_failed)``) and
``<study>_runs.csv`` with the final statistics of every run. ``grid_id`` identifies the
configuration (hash, master seed, seeds per cell): ``merge_grid_csvs`` refuses to combine
files of different studies or configurations.

Diverged runs: a run whose final statistics are non-finite or leave any physically possible
range is counted as *failed* (``n_failed``), never as collapsed or not: GMM variances outside
``[VAR_MIN, variance_limit(beta_i, R)]`` (:func:`annealvi_lib.models.student.variance_limit`), RealNVP
spreads or KLs far beyond the target's (:func:`annealvi_lib.metrics.run_summary`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import __version__
from .._rng import fast_threefry
from ..cache import source_hash
from .grid_cache import (CacheError, _cell_identity, _cell_path, _check_writable, _load_cell,
                         _save_cell)
from .._validate import (MAX_SEED, check_beta, check_choice, check_int_at_least, check_int_range,
                        check_shard, check_t0)
from ..config import GMMGridConfig, RealNVPGridConfig
from ..paths import cache_dir as default_cache_dir
from ..models.schedules import SCHEDULES
from ..seeding import cell_id, lanes, padded_blocks, run_keys
from ..metrics import wilson_interval
from ..models.student import Hyper, classify_collapse, variance_limit
from ..models.reduced import LANES as _REDUCED_LANES

__all__ = [
    "STUDIES",
    "GRID_COLUMNS",
    "GridResult",
    "parse_shard",
    "lanes",
    "grid_id",
    "check_cells",
    "grid_cells",
    "config_hash",
    "run_gmm_group",
    "run_grid",
    "default_workers",
    "summarise_cell",
]

STUDIES = ("gmm", "realnvp")
GRID_COLUMNS = ("beta_i", "t0", "n_runs", "n_collapsed", "n_failed", "p_collapse", "ci_low",
                "ci_high")
#: Columns identifying the experiment, appended to both CSVs (checked by the merge).
ID_COLUMNS = ("study", "grid_id")
#: Most runs of one compiled call per sampler (exact: memory-bound, fastest one at a time).
MAX_LANES = {"fast": _REDUCED_LANES, "exact": 1}   # the exact sampler is memory-bound


GMM_RUN_FIELDS = ("collapsed", "failed", "m1", "m2", "s", "var1", "var2", "var_min", "var_max")


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
        return check_shard((int(k_str), int(n_str)))
    except ValueError:
        raise ValueError(f"shard must look like k/n with integers 0 <= k < n, got {text!r}") from None


def check_cells(cells) -> list[tuple[float, float]]:
    """Validate explicit ``(beta_i, t0)`` cells: beta_i in (0, 1], t0 > 0 (at most MAX_STEPS)."""
    out = []
    for c in cells:
        try:
            b, t = c
        except (TypeError, ValueError):
            raise ValueError(f"cells must be (beta_i, t0) pairs, got {c!r}") from None
        out.append((check_beta("beta_i", b), check_t0("t0", t)))
    if not out:
        raise ValueError("cells must hold at least one (beta_i, t0) pair")
    # cells are identified by 12 significant digits (seeding.cell_id): two entries that agree
    # to that precision are the same cell (same keys, same cache file)
    seen = {}
    for c in out:
        key = cell_id(*c)
        if key in seen:
            raise ValueError(f"cells must be distinct, got {seen[key]} and {c} (equal to 12 "
                             "significant digits)")
        seen[key] = c
    return out


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
              "guidance_seeds", "vanilla_dims", "vanilla_seeds", "vanilla_steps",
              "stochastic_samples", "bscan_log10", "bscan_t0s", "bscan_batches", "bscan_seeds",
              "trend_dims", "trend_cells", "trend_seeds", "compare_seeds"):
        d.pop(k, None)
    if d.get("schedule") == "exp":    # results of the paper's schedule keep their identity
        d.pop("schedule")
    payload = json.dumps({"study": study, "cfg": d, "extra": extra, "version": __version__,
                          "source": _source_hash(study)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: the modules whose code produces a study's numbers (configuration and validation modules enter
#: through the configuration's hash); checked against the import graph by tests/test_layout.py
_SOURCES = {"gmm": ("models/student.py", "models/reduced.py", "models/reduced_grads.py",
                    "models/reduced_noise.py", "models/targets.py", "models/schedules.py",
                    "seeding.py", "_rng.py"),
            "realnvp": ("models/realnvp.py", "models/realnvp_training.py", "metrics.py",
                        "models/targets.py", "models/schedules.py", "seeding.py", "_rng.py")}
#: this module's functions that build and run a study's cells (their source is hashed too)
_RUNNER_CODE = {"gmm": ("_gmm_runs", "run_gmm_group"), "realnvp": ("_compute",)}


def grid_id(study: str, cfg, master_seed: int, **extra) -> str:
    """Identifier of a grid's results: configuration hash, master seed and seeds per cell (also
    the name of its cache folder)."""
    return config_hash(study, cfg, **extra) + f"_seed{master_seed}_n{cfg.n_seeds}"


def _source_hash(study: str) -> str:
    """Hash of the library modules a study's runs depend on and of the runner's own functions
    that build its cells (location-free, see :func:`annealvi_lib.cache.location_free`), so that
    a code change (even without a version bump) never reuses stale cached results."""
    return source_hash(*_SOURCES[study], functions=[globals()[f] for f in _RUNNER_CODE[study]])


# --------------------------------------------------------------------------------------------
# GMM cells: one compiled function per n_iter; beta_i (and t0) are traced, seeds are vmapped.
# --------------------------------------------------------------------------------------------

def _gmm_runs(keys, beta_is, t0s, *, target_d, R, w_star, n_iter, hyper, sampler,
              schedule="exp"):
    """Final statistics of many runs (one per key) of the GMM student; vmapped, jit-compiled."""
    from ..models import reduced
    from ..models import student   # local import: reduced imports student
    from ..models.targets import Target

    mu_star = jnp.zeros(target_d).at[0].set(1.0)
    target = Target(mu_star=mu_star, R=R, w_star=w_star)

    def one(key, beta_i, t0):
        k_init, k_noise = jax.random.split(key)
        beta_of_t = partial(SCHEDULES[schedule], beta_i=beta_i, t0=t0)
        var0 = 1.0 / beta_i         # = 1 / beta(0) for every family (constant: use beta_i = 1)
        betas = beta_of_t(jnp.arange(n_iter + 1))
        if sampler == "fast":
            state0 = reduced.init_reduced(k_init, target, var0)
            final, lo, hi = reduced.run_with_range(k_noise, state0, target, betas, hyper)
            m1, m2, s = final.m[..., 0], final.m[..., 1], final.s
        else:
            state0 = student.init_student(k_init, target_d, R, var0)
            final, lo, hi = student.run_with_range(student.jko_step, k_noise, state0, target,
                                                   betas, hyper)
            m1, m2, s = student.summary_stats(final, target)
        return m1, m2, s, final.var[0], final.var[1], lo, hi

    return jax.vmap(one)(keys, beta_is, t0s)


_gmm_runs_jit = jax.jit(_gmm_runs, static_argnames=("target_d", "R", "w_star", "n_iter",
                                                      "hyper", "sampler", "schedule"))


def run_gmm_group(cfg: GMMGridConfig, cells: Sequence[tuple[float, float]], master_seed: int,
                  sampler: str, on_block: Callable[[int], None] | None = None):
    """Run all replicates of several cells sharing one ``t0`` (hence one ``n_iter``).

    Each cell's replicates are split into blocks of :func:`lanes` runs (the last one padded by
    repeating its last replicate); every block is one call of the same compiled function, whose
    inputs depend on (cell, block) only. Returns ``{cell: dict of per-run arrays}``.
    """
    t0_values = {t0 for _, t0 in cells}
    if len(t0_values) != 1:
        raise ValueError("run_gmm_group needs cells that share one t0")
    t0 = t0_values.pop()
    n_iter = int(round(t0)) + cfg.n_iter_extra
    p = cfg.problem
    hyper = Hyper(lr=p.lr, batch=p.batch, sampling=p.sampling)
    n = cfg.n_seeds
    width = lanes(n, MAX_LANES[sampler])
    result = {}
    for beta_i, _ in cells:
        # the exponential schedule keeps the keys it had before other families existed
        cell_key = (("gmm", beta_i, t0) if cfg.schedule == "exp" else
                    ("gmm", cfg.schedule, beta_i, t0))
        keys = run_keys(master_seed, cell_key, np.arange(n))
        outs = []
        for idx, keep in padded_blocks(n, width):
            with fast_threefry():
                res = _gmm_runs_jit(keys[idx], jnp.full(width, beta_i, jnp.float32),
                                    jnp.full(width, t0, jnp.float32), target_d=p.d, R=p.R,
                                    w_star=p.w_star, n_iter=n_iter, hyper=hyper, sampler=sampler,
                                    schedule=cfg.schedule)
            outs.append(np.stack([np.asarray(a) for a in res], axis=-1)[:keep])
            if on_block is not None:
                on_block(keep * n_iter)
        m1, m2, s, v1, v2, lo, hi = np.concatenate(outs).T
        # diverged: a variance left the physical range at any step (see variance_limit)
        collapsed, failed = (np.asarray(a) for a in classify_collapse(
            s, lo, hi, var_max=variance_limit(beta_i, p.R)))
        result[(beta_i, t0)] = {"collapsed": collapsed, "failed": failed, "m1": m1, "m2": m2,
                                "s": s, "var1": v1, "var2": v2, "var_min": lo, "var_max": hi}
    return result


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
             master_seed: int | None = None, progress: bool | None = None, workers: int = 1,
             cells: Sequence[tuple[float, float]] | None = None) -> GridResult:
    """Run (or load from cache) every cell of a grid, or of one shard of it.

    Args:
      study: ``"gmm"`` or ``"realnvp"``.
      cfg: the grid configuration (a preset's ``gmm_grid`` or ``realnvp_grid``, possibly with
        fields replaced by CLI options).
      sampler: GMM only, ``"fast"`` (O(B + d), default from cfg) or ``"exact"`` (O(B d)).
      shard: ``(k, n)`` with ``0 <= k < n`` to run only cells ``i % n == k``.
      cache: cache folder (default :func:`annealvi_lib.paths.cache_dir`).
      master_seed: integer in [0, 2^32 - 1]; default ``cfg.seed``.
      progress: show a tqdm bar (default: only when attached to a terminal or a notebook).
      cells: explicit ``(beta_i, t0)`` cells to run instead of the product grid of ``cfg``
        (e.g. a few scattered validation cells; the cache is shared with the product grid);
        validated like the CLI's options.
      workers: local worker processes (each pinned to one core, single-threaded XLA, running
        one shard of the missing cells into the shared cache). On a 2-core CPU two workers beat
        one process using both cores for these small, latency-bound kernels. The numbers do not
        depend on it.
    Returns:
      :class:`GridResult` with one summary row per cell (in grid order) and one row per run.
    Raises:
      ValueError: invalid arguments. CacheError: cells are missing and the cache cannot be
      written (when every cell is cached, a read-only cache is fine).
    """
    check_choice("study", study, STUDIES)
    want = GMMGridConfig if study == "gmm" else RealNVPGridConfig
    if not isinstance(cfg, want):
        raise ValueError(f"cfg must be a {want.__name__} for the {study} study, got "
                         f"{type(cfg).__name__}")
    master_seed = cfg.seed if master_seed is None else check_int_range("seed", master_seed, 0,
                                                                       MAX_SEED)
    cells = check_cells(grid_cells(cfg) if cells is None else cells)
    shard = check_shard(shard)
    workers = check_int_at_least("workers", workers, 1)
    if shard is not None:
        k, n = shard
        cells = [c for i, c in enumerate(cells) if i % n == k]
    if study == "gmm":
        sampler = check_choice("sampler", sampler or cfg.sampler, ("exact", "fast"))
        fields = GMM_RUN_FIELDS
        extra = {"sampler": sampler}
    else:
        from ..models.realnvp_training import REALNVP_RUN_FIELDS as fields  # noqa: N811
        for _, t0 in cells:
            if not float(t0).is_integer():
                raise ValueError(f"t0 must be a whole number of steps for realnvp, got {t0!r}")
        extra = {}
    gid = grid_id(study, cfg, master_seed, **extra)
    root = Path(cache or default_cache_dir()) / study / gid
    ident = {c: _cell_identity(study, root, c, cfg.n_seeds) for c in cells}
    results = {}
    todo = []
    for cell in cells:
        data = _load_cell(_cell_path(root, cell), ident[cell], fields)
        if data is None:
            todo.append(cell)
        else:
            results[cell] = data
    if todo:
        _check_writable(root)
    # fewer missing cells than workers: one in-process run using every core is faster
    if workers > 1 and len(todo) >= workers:
        _run_in_workers(study, cfg, sampler, todo, root, master_seed, workers, progress)
        for cell in todo:
            data = _load_cell(_cell_path(root, cell), ident[cell], fields)
            if data is None:
                raise RuntimeError(f"worker did not produce cell {cell} in {root}")
            results[cell] = data
        todo = []
    bar = _progress_bar(study, cfg, todo, progress)
    try:
        for cell, data in _compute(study, cfg, sampler, todo, master_seed,
                                   bar.update if bar else None):
            _save_cell(_cell_path(root, cell), data, ident[cell])
            results[cell] = data
    finally:
        if bar:
            bar.close()
    summary, runs = [], []
    for cell in cells:
        data = results[cell]
        summary.append({**summarise_cell(cell[0], cell[1], data["collapsed"], data["failed"]),
                        "study": study, "grid_id": gid})
        for r in range(cfg.n_seeds):
            row = {"beta_i": cell[0], "t0": cell[1], "replicate": r}
            row.update({k: _scalar(data[k][r]) for k in fields})
            row.update({"study": study, "grid_id": gid})
            runs.append(row)
    return GridResult(summary, runs)


def _compute(study, cfg, sampler, cells, master_seed, progress_update=None):
    """Yield ``(cell, per-run arrays)`` for every cell of ``cells`` (GMM: grouped by t0)."""
    if study == "gmm":
        for t0 in sorted({t for _, t in cells}):
            group = [c for c in cells if c[1] == t0]
            yield from run_gmm_group(cfg, group, master_seed, sampler,
                                     on_block=progress_update).items()
    else:
        from ..models.realnvp_training import run_realnvp_cell

        for cell in cells:
            data = run_realnvp_cell(cfg, cell[0], cell[1], np.arange(cfg.n_seeds), master_seed)
            if progress_update:
                progress_update(cfg.n_seeds * (int(round(cell[1])) + cfg.n_iter_extra))
            yield cell, {k: np.asarray(v) for k, v in data.items()}


def _die_with_parent() -> None:
    """Linux: ask the kernel to send SIGTERM to this process when its parent dies, so that a
    worker never outlives a killed grid run."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(study, cfg, sampler, cells, root, master_seed, core):
    """Entry point of one worker process: compute ``cells`` into the cache folder ``root``."""
    _die_with_parent()
    try:
        os.sched_setaffinity(0, {core % os.cpu_count()})
    except (AttributeError, OSError):   # not Linux: no pinning
        pass
    root = Path(root)
    try:
        for cell, data in _compute(study, cfg, sampler, cells, master_seed):
            _save_cell(_cell_path(root, cell), data, _cell_identity(study, root, cell,
                                                                    cfg.n_seeds))
    except CacheError as exc:
        import sys

        print(f"annealvi worker: error: {exc}", file=sys.stderr)
        sys.exit(3)


def _run_in_workers(study, cfg, sampler, todo, root, master_seed, workers, progress):
    """Split the missing cells over ``workers`` spawned processes and wait, showing progress by
    polling the cache folder. SIGTERM, Ctrl-C or an error here stops the workers too."""
    import multiprocessing as mp
    import signal
    import time

    ctx = mp.get_context("spawn")
    # children read XLA_FLAGS when their JAX backend starts: one thread each
    old = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = ((old + " ") if old else "") + (
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    procs = []

    def _on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old_term = None
    try:
        old_term = signal.signal(signal.SIGTERM, _on_term)
    except ValueError:   # not the main thread: no handler, the workers still die with us
        pass
    bar = None
    try:
        try:
            for k in range(workers):
                part = todo[k::workers]
                if part:
                    p = ctx.Process(target=_worker_main, daemon=True,
                                    args=(study, cfg, sampler, part, str(root), master_seed, k))
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
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            new = {c for c in todo if c not in done and _cell_path(root, c).exists()}
            if bar:
                bar.update(sum(steps[c] for c in new))
            done |= new
    finally:
        if bar:
            bar.close()
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    codes = [p.exitcode for p in procs]
    if any(c == 3 for c in codes):
        raise CacheError(f"cannot write the results cache {root} (grid workers failed)")
    bad = [c for c in codes if c != 0]
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


def default_workers(preset_name: str) -> int:
    """Worker processes for grid runs: one per core (max 2) except at the quick preset, where
    spawning costs more than it saves."""
    return 1 if preset_name == "quick" else min(2, os.cpu_count() or 1)
