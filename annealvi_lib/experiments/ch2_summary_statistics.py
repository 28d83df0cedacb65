"""Chapter 2's computations: the numerical checks of the derivation, the simulation-vs-ODE
validation run, the error scans in d and B (with the fitted error law), the variance-lag
comparison (the figures are in :mod:`annealvi_lib.figures.ch2`).

Every experiment takes the preset's :class:`~annealvi_lib.config.OdeCheckConfig`. The three
expensive ones (:func:`validation_run`, :func:`error_scan`, :func:`variance_lag`) are cached on
disk under ``<cache_dir>/ode_check/`` (see :func:`cache_path`), so the notebook and
``python -m annealvi_lib figures ch2_*`` share them and a figure is redrawn without recomputing.

The cheap checks (:func:`gradient_check`, :func:`f_identity_error`, :func:`quadrature_check`,
:func:`map_order`) are not cached. Every function that evaluates JAX code does so inside one
``jax.jit`` call: op-by-op (eager) evaluation of the quadratures costs seconds of per-primitive
compilation, far more than the computation itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import __version__
from ..models import student as st
from ..theory import ode as th
from .._validate import check_int_at_least, check_positive
from ..cache import load_npz, save_npz_atomic, source_hash
from ..config import OdeCheckConfig
from ..models.schedules import Schedule
from ..models.targets import make_target

__all__ = [
    "preset_rows", "gradient_check", "f_identity_error", "quadrature_check", "map_order",
    "ValidationResult", "validation_run", "ScanResult", "ErrorLaw", "error_scan",
    "fit_error_law", "LagResult", "variance_lag", "lag_estimate", "start_experiments",
    "cache_path",
]

_STATS = ("m1", "m2", "s", "var1", "var2", "beta")


def beta_i(C: OdeCheckConfig) -> float:
    """Initial inverse temperature of the validation run and the scans, ``1/(factor R^2)``."""
    return C.beta_i


def preset_rows(name: str, C: OdeCheckConfig) -> list[tuple[str, str]]:
    """(label, value) rows describing the chapter's sizes at preset ``name``."""
    p = C.problem
    return [("preset", name), ("d, B (validation)", f"{p.d}, {p.batch}"),
            ("R, w*, lr", f"{p.R}, {p.w_star}, {p.lr}"),
            ("beta_i, t0, n_iter", f"{beta_i(C):.4g}, {C.t0:g}, {C.n_iter}"),
            ("scan: t0, n_iter", f"{C.scan_t0:g}, {C.scan_n_iter}"),
            ("d-scan (B fixed)", f"{C.dims} (B={C.scan_batch})"),
            ("B-scan (d fixed)", f"{C.batches} (d={C.scan_d})"),
            ("seeds per scan point", str(C.n_seeds)),
            ("variance lag: beta_i, t0s, d, B",
             f"{C.lag_beta_i:g}, {C.lag_t0s}, {C.lag_d}, {C.lag_batch}")]


# --------------------------------------------------------------------------------------------
# cheap numerical checks of the derivation (sections 1-3 of the chapter)
# --------------------------------------------------------------------------------------------

def gradient_check(R: float, w_star: float, d: int = 16, beta: float = 0.25, var: float = 4.0,
                   n_batches: int = 8, n_samples: int = 4096, seed: int = 0) -> float:
    """Largest |Monte-Carlo mean gradient - closed form| / standard error over the 2 x d
    coordinates of the means.

    The closed form is :func:`annealvi_lib.theory.ode.expected_mean_grad` (exact at any d for equal variances);
    the Monte-Carlo estimate is ``jax.grad`` of :func:`annealvi_lib.models.student.mc_loss` on ``n_batches``
    independent batches of ``n_samples`` samples per component, the standard error their spread.

    Args:
      R, w_star: target parameters. d: dimension (>= 3). beta: inverse temperature in (0, 1].
      var: student variance (> 0). n_batches: independent batches (>= 2). n_samples: samples
      per component and batch (>= 1). seed: PRNG seed (student init: key(seed), noise: key(seed+1)).
    Returns:
      the largest z-score (a float; ~N(0,1) maxima, i.e. typically 2-4 for 32 coordinates).
    """
    check_int_at_least("d", d, 3)
    check_positive("var", var)
    n_batches = check_int_at_least("n_batches", n_batches, 2)
    check_int_at_least("n_samples", n_samples, 1)
    tgt = make_target(d, R, w_star)
    state = st.init_student(jax.random.key(seed), d, R, var)
    zs = jax.random.normal(jax.random.key(seed + 1), (n_batches, 2, n_samples, d))

    @jax.jit
    def zscore(zs):
        exact = th.expected_mean_grad(state, tgt, beta)
        grads = jax.vmap(lambda z: jax.grad(st.mc_loss)(state, tgt, beta, z).mu)(zs)
        se = grads.std(0, ddof=1) / math.sqrt(n_batches)
        return jnp.max(jnp.abs(grads.mean(0) - exact) / se)

    return float(zscore(zs))


def max_abs_t_quantile(n: int, dof: int, q: float = 0.95) -> float:
    """``q``-quantile of the largest of ``n`` independent ``|t_dof|`` variables: what the
    largest z-score of :func:`gradient_check` (``n = 2 d`` coordinates, ``dof = n_batches - 1``,
    the standard error estimated from the batches) stays below with probability ``q`` when the
    closed form is exact."""
    from scipy.stats import t as student_t

    n = check_int_at_least("n", n, 1)
    dof = check_int_at_least("dof", dof, 1)
    return float(student_t.ppf(0.5 + 0.5 * q ** (1.0 / n), dof))


def f_identity_error(R: float, us=(0.5, 1.0, 3.0, 30.0, 1e3), ws=(0.5, 0.3),
                     n_s: int = 41) -> float:
    """Largest |one-sigmoid f - squared-sigmoid f| over s in [-1, 1] (``n_s`` points) and the
    given component stds ``us`` and weights ``ws`` (all evaluated in one jitted call)."""
    s = jnp.linspace(-1.0, 1.0, n_s)[:, None, None]
    u = jnp.asarray(us, jnp.float32)[None, :, None]
    w = jnp.asarray(ws, jnp.float32)[None, None, :]
    diff = jax.jit(lambda s, u, w: jnp.max(jnp.abs(th.f(s, R=R, u=u, w1=w)
                                                   - th.f_squared_form(s, R=R, u=u, w1=w))))
    return float(diff(s, u, w))


def _ref_sigmoid_mean(c: float, b: float) -> float:
    """mpmath reference for ``E sigma(c + b xi)`` with the integrand's kink as breakpoint."""
    import mpmath as mp

    with mp.workdps(20):
        sig = lambda y: 1 / (1 + mp.e ** (-y))
        fn = lambda x: sig(c + b * x) * mp.e ** (-x * x / 2) / mp.sqrt(2 * mp.pi)
        x0 = -c / b
        pts = {-mp.inf, -8, 0, 8, mp.inf}
        pts |= {p for p in (x0 - 5 / b, x0, x0 + 5 / b) if -60 < p < 60}
        return float(mp.quad(fn, sorted(pts)))


def quadrature_check(n_ref: int, seed: int = 0) -> tuple[float, float]:
    """Max abs error of ``E sigma(c + b xi)`` against mpmath at ``n_ref`` random points
    (c uniform in [-25, 25], log10 b uniform in [-2, 3.5]).

    Returns ``(hybrid, plain)``: the library's hybrid rule and plain 32-node Gauss-Hermite.
    """
    from scipy.special import expit

    n_ref = check_int_at_least("n_ref", n_ref, 1)
    rng = np.random.default_rng(seed)
    cc, bb = rng.uniform(-25, 25, n_ref), 10 ** rng.uniform(-2, 3.5, n_ref)
    ref = np.array([_ref_sigmoid_mean(c, b) for c, b in zip(cc, bb)])
    ours = np.asarray(jax.jit(th.gauss_sigmoid_mean)(jnp.asarray(cc), jnp.asarray(bb)))
    xg, wg = np.polynomial.hermite_e.hermegauss(32)
    plain = (expit(cc[:, None] + bb[:, None] * xg) * wg / math.sqrt(2 * math.pi)).sum(-1)
    return float(np.max(np.abs(ours - ref))), float(np.max(np.abs(plain - ref)))


def map_order(R: float, w_star: float = 0.8, lrs=(1e-2, 5e-3, 2.5e-3),
              beta: float = 0.2) -> tuple[list[float], float]:
    """One-step difference between the renormalised expected map and an Euler step of the
    tangent ODE, ``max |map(x) - x - lr rhs(x)|`` at two test points, for each ``lr``.

    Returns ``(errors, slope)`` with the log-log slope in lr (expected 2: the map is Euler for
    the ODE up to O(lr^2)).
    """
    x = jnp.asarray([[0.3, -0.2, -0.5], [0.05, 0.02, 0.1]])
    rhs = jax.jit(lambda x: th.ode_rhs(x, beta, R=R, w_star=w_star))(x)
    sch = Schedule("exp", beta, 1e6)        # beta(0) = beta: one step at (almost) fixed beta
    errs = []
    # lr is a compile-time constant of the integrator: one step op by op is cheaper than one
    # XLA compilation per lr (disable_jit is thread-local: background jobs keep compiling)
    with jax.disable_jit():
        for lr in lrs:
            tr = th.integrate_ode(x, sch, 1, R=R, w_star=w_star, lr=lr)
            new = jnp.stack([tr.m1[:, 1], tr.m2[:, 1], tr.s[:, 1]], -1)
            errs.append(float(jnp.max(jnp.abs(new - x - lr * rhs))))
    slope = float(np.polyfit(np.log(lrs), np.log(errs), 1)[0])
    return errs, slope


# --------------------------------------------------------------------------------------------
# on-disk cache of the expensive experiments
# --------------------------------------------------------------------------------------------

_SOURCES = ("theory/ode.py", "models/student.py", "models/targets.py", "models/schedules.py",
            "_rng.py")


def _source_digest(kind: str) -> str:
    """Hash of the modules the experiments run, of the experiment's own function and of its
    result fields (so a code change, not only a version bump, invalidates the cache; plotting
    edits do not). The result class enters by its field names, not its source (see
    :func:`annealvi_lib.cache.source_hash`).
    """
    fn_name, cls_name = _EXPERIMENT_CODE[kind]
    return source_hash(*_SOURCES, functions=[globals()[fn_name]],
                       extra=" ".join(globals()[cls_name]._fields))


def cache_path(kind: str, C: OdeCheckConfig, cache: str | os.PathLike | None = None) -> Path:
    """Cache file ``<cache>/ode_check/<kind>-<hash>.npz`` of one experiment.

    The hash covers the full :class:`OdeCheckConfig`, the library version and the source of
    :mod:`annealvi_lib.theory.ode`, :mod:`annealvi_lib.models.student` (and the modules they use)
    and of the experiment function.

    Args:
      kind: ``"validation"``, ``"scan"`` or ``"lag"``.
      C: the chapter's configuration.
      cache: cache folder (default :func:`annealvi_lib.paths.cache_dir`).
    """
    from .._validate import check_choice
    from ..paths import cache_dir

    check_choice("kind", kind, tuple(_EXPERIMENTS))
    payload = json.dumps({"kind": kind, "cfg": dataclasses.asdict(C), "version": __version__,
                          "source": _source_digest(kind)},
                         sort_keys=True, default=str)
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return cache_dir(cache) / "ode_check" / f"{kind}-{key}.npz"


def _save(path: Path, data: dict[str, np.ndarray]) -> None:
    """Atomic npz write (temporary file in the same folder, then ``os.replace``)."""
    save_npz_atomic(path, data)


def _load(path: Path, keys) -> dict[str, np.ndarray] | None:
    """The arrays of ``path`` if it exists, reads and has all ``keys``; else None."""
    data = load_npz(path)
    return data if data is not None and set(keys) <= set(data) else None


def _cached(kind: str, C: OdeCheckConfig, cls, cache, refresh: bool, path: Path | None = None,
            **kwargs):
    """Load experiment ``kind`` (a NamedTuple ``cls`` of arrays) from disk or compute and store
    it (at ``path``, default :func:`cache_path`)."""
    path = cache_path(kind, C, cache) if path is None else path
    data = None if refresh else _load(path, cls._fields)
    if data is not None:
        try:
            return cls(**{k: data[k] for k in cls._fields})._checked(C)
        except ValueError:
            pass                                    # inconsistent file: recompute
    res = _EXPERIMENTS[kind](C, **kwargs)
    _save(path, {k: np.asarray(v) for k, v in res._asdict().items()})
    return res


def _np_traj(tr, idx=0) -> np.ndarray:
    """Stack the statistics of one trajectory (row ``idx`` of a seed batch) to (6, n+1)."""
    return np.stack([np.asarray(getattr(tr, k)[idx], np.float32) for k in _STATS])


# --------------------------------------------------------------------------------------------
# section 4: one annealed run against the ODEs
# --------------------------------------------------------------------------------------------

class ValidationResult(NamedTuple):
    """One simulated run and three theories from its initial statistics.

    ``sim``, ``ode3``, ``ode5``, ``ode5n``: arrays (6, n_iter + 1) of (m1, m2, s, var1, var2,
    beta) per step (simulation; 3-statistic ODE; 5-statistic map; 5-statistic map with the
    finite-batch correction). ``errors``: their sup-norm errors over (m1, m2, s), shape (3,).
    """

    sim: np.ndarray
    ode3: np.ndarray
    ode5: np.ndarray
    ode5n: np.ndarray
    errors: np.ndarray

    def _checked(self, C: OdeCheckConfig):
        if any(a.shape != (6, C.n_iter + 1) for a in (self.sim, self.ode3, self.ode5, self.ode5n)):
            raise ValueError("cached validation run has the wrong shape")
        return self

    def stat(self, which: str, name: str) -> np.ndarray:
        """Trajectory of statistic ``name`` (m1, m2, s, var1, var2, beta) of ``which``."""
        return getattr(self, which)[_STATS.index(name)]


def _validation(C: OdeCheckConfig) -> ValidationResult:
    p = C.problem
    sch = Schedule("exp", beta_i(C), C.t0)
    tgt = make_target(p.d, p.R, p.w_star)
    ik, nk = st.seed_keys(C.seed, 1)
    _, sim = st.simulate_seeds(ik, nk, tgt, sch, C.n_iter, st.Hyper(p.lr, p.batch, p.sampling))
    # keep the seed axis (1, .): one compiled integrator per shape
    x0 = th.initial_stats(ik, tgt)
    x5 = jnp.concatenate([x0, jnp.full((1, 2), 1.0 / beta_i(C))], -1)
    kw = dict(R=p.R, w_star=p.w_star, lr=p.lr)
    odes = (th.integrate_ode(x0, sch, C.n_iter, **kw),
            th.integrate_ode5(x5, sch, C.n_iter, **kw),
            th.integrate_ode5(x5, sch, C.n_iter, d_over_batch=(p.d - 3) / p.batch, **kw))
    errors = np.array([float(th.sup_error(o, sim)[0]) for o in odes])
    return ValidationResult(_np_traj(sim), *(_np_traj(o) for o in odes), errors)


def validation_run(C: OdeCheckConfig, cache=None, refresh: bool = False) -> ValidationResult:
    """One annealed run (``C.problem``'s d and B, exp schedule from ``beta_i(C)`` with ``C.t0``,
    ``C.n_iter`` steps, master seed ``C.seed``) against the 3-statistic ODE, the 5-statistic
    map and the 5-statistic map with finite-batch correction, all started at the run's initial
    statistics. Cached on disk (:func:`cache_path`)."""
    return _cached("validation", C, ValidationResult, cache, refresh)


# --------------------------------------------------------------------------------------------
# section 5: error scaling with d and B
# --------------------------------------------------------------------------------------------

class ScanResult(NamedTuple):
    """Sup-norm errors per seed at each scanned (d, B) point.

    ``points``: (P, 2) integer (d, B), each distinct point once (the d-scan at B=scan_batch and
    the B-scan at d=scan_d may share one). ``e3``, ``e5``: (P, n_seeds) errors of the
    3-statistic ODE and of the 5-statistic map with finite-batch correction.
    """

    points: np.ndarray
    e3: np.ndarray
    e5: np.ndarray

    def _checked(self, C: OdeCheckConfig):
        pts = _scan_points(C)
        if self.points.shape != (len(pts), 2) or self.e5.shape != (len(pts), C.n_seeds) \
                or self.e3.shape != self.e5.shape:
            raise ValueError("cached scan has the wrong shape")
        return self

    def series(self, which: str, dB: list[tuple[int, int]]) -> np.ndarray:
        """Errors ``which`` (``"e3"`` or ``"e5"``) at the points ``dB``, shape (len(dB), n_seeds)."""
        index = {tuple(int(v) for v in p): i for i, p in enumerate(self.points)}
        return getattr(self, which)[[index[tuple(p)] for p in dB]]


def d_series(C: OdeCheckConfig) -> list[tuple[int, int]]:
    """The d-scan's (d, B) points."""
    return [(int(d), int(C.scan_batch)) for d in C.dims]


def b_series(C: OdeCheckConfig) -> list[tuple[int, int]]:
    """The B-scan's (d, B) points."""
    return [(int(C.scan_d), int(b)) for b in C.batches]


def _scan_points(C: OdeCheckConfig) -> list[tuple[int, int]]:
    return list(dict.fromkeys(d_series(C) + b_series(C)))


def _scan(C: OdeCheckConfig, progress: bool | None = None) -> ScanResult:
    from tqdm.auto import tqdm

    p = C.problem
    sch = Schedule("exp", beta_i(C), C.scan_t0)
    kw = dict(R=p.R, w_star=p.w_star, lr=p.lr)
    pts = _scan_points(C)
    ik, nk = st.seed_keys(C.seed + 1, C.n_seeds)
    e3, e5 = [], []
    for d, B in tqdm(pts, desc="(d, B) scan", disable=progress is False):
        tg = make_target(d, p.R, p.w_star)
        _, tr = st.simulate_seeds(ik, nk, tg, sch, C.scan_n_iter, st.Hyper(p.lr, B, p.sampling))
        x0 = th.initial_stats(ik, tg)
        x5 = jnp.concatenate([x0, jnp.full((C.n_seeds, 2), 1.0 / beta_i(C))], -1)
        e3.append(np.asarray(th.sup_error(th.integrate_ode(x0, sch, C.scan_n_iter, **kw), tr)))
        e5.append(np.asarray(th.sup_error(
            th.integrate_ode5(x5, sch, C.scan_n_iter, d_over_batch=(d - 3) / B, **kw), tr)))
    return ScanResult(np.array(pts, dtype=np.int64), np.array(e3), np.array(e5))


def error_scan(C: OdeCheckConfig, cache=None, refresh: bool = False,
               progress: bool | None = None) -> ScanResult:
    """Simulation vs theory at every (d, B) of the d-scan (``C.dims`` at ``C.scan_batch``) and
    the B-scan (``C.batches`` at ``C.scan_d``): ``C.n_seeds`` seeds (master seed ``C.seed + 1``)
    on the exp schedule from ``beta_i(C)`` with ``C.scan_t0`` for ``C.scan_n_iter`` steps.
    Cached on disk (:func:`cache_path`)."""
    return _cached("scan", C, ScanResult, cache, refresh, progress=progress)


class ErrorLaw(NamedTuple):
    """Fitted error law of the 5-statistic map: log-log slopes of the seed-mean error in d (at
    fixed B) and in B (at fixed d), and the constant of ``error ~ const sqrt(d/B)`` (geometric
    mean of ``error / sqrt(d/B)`` over the distinct points)."""

    slope_d: float
    slope_b: float
    const: float


def fit_error_law(scan: ScanResult, C: OdeCheckConfig) -> ErrorLaw:
    """Fit :class:`ErrorLaw` to the seed-mean errors of ``scan`` (a slope needs >= 2 points)."""
    def slope(series, col):
        x = np.array([pt[col] for pt in series], float)
        y = scan.series("e5", series).mean(1)
        return float(np.polyfit(np.log(x), np.log(y), 1)[0]) if len(x) > 1 else float("nan")

    ratio = scan.e5.mean(1) / np.sqrt(scan.points[:, 0] / scan.points[:, 1])
    return ErrorLaw(slope(d_series(C), 0), slope(b_series(C), 1),
                    float(np.exp(np.mean(np.log(ratio)))))


def slope_intervals(scan: ScanResult, C: OdeCheckConfig, n_boot: int = 400, seed: int = 0):
    """95% percentile-bootstrap intervals of the d- and B-slopes of :func:`fit_error_law`,
    resampling the seeds of every scan point (with replacement). Returns
    ``((d_lo, d_hi), (b_lo, b_hi))``."""
    rng = np.random.default_rng(seed)
    n = scan.e5.shape[1]
    d_sl, b_sl = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=(scan.e5.shape[0], n))
        law = fit_error_law(scan._replace(e5=np.take_along_axis(scan.e5, idx, 1)), C)
        d_sl.append(law.slope_d)
        b_sl.append(law.slope_b)
    q = lambda v: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
    return q(d_sl), q(b_sl)


# --------------------------------------------------------------------------------------------
# section 6: variance lag
# --------------------------------------------------------------------------------------------

class LagResult(NamedTuple):
    """Slow vs fast annealing from ``C.lag_beta_i`` (one run per t0 in ``C.lag_t0s``, n_iter =
    t0 + 50). Arrays of shape (len(lag_t0s),): ``e3``/``e5`` sup-norm errors of the 3- and
    5-statistic systems (both with the finite-batch correction), ``overshoot`` the simulation's
    ``max_t (var1 beta - 1)``, ``rate`` = ``ln(1/beta_i)/(lr t0)``."""

    t0s: np.ndarray
    e3: np.ndarray
    e5: np.ndarray
    overshoot: np.ndarray
    rate: np.ndarray

    def _checked(self, C: OdeCheckConfig):
        if self.e3.shape != (len(C.lag_t0s),):
            raise ValueError("cached lag comparison has the wrong shape")
        return self


def lag_estimate(rate):
    """Relative variance lag ``var beta - 1`` predicted by ``dv/dtau = -(v - 1/beta)`` with
    ``ln beta`` growing at ``rate`` per unit tau: steady state ``rate/(1 - rate)`` for
    ``rate < 1``, unbounded (inf) otherwise -- the variance cannot keep up."""
    r = np.asarray(rate, float)
    with np.errstate(divide="ignore"):
        return np.where(r < 1, r / np.maximum(1 - r, 1e-300), np.inf)


def _lag(C: OdeCheckConfig, progress: bool | None = None) -> LagResult:
    from tqdm.auto import tqdm

    p = C.problem
    kw = dict(R=p.R, w_star=p.w_star, lr=p.lr)
    tg = make_target(C.lag_d, p.R, p.w_star)
    ik, nk = st.seed_keys(C.seed + 2, 1)
    x0 = th.initial_stats(ik, tg)
    x5 = jnp.concatenate([x0, jnp.full((1, 2), 1.0 / C.lag_beta_i)], -1)
    dob = (C.lag_d - 3) / C.lag_batch
    rows = []
    for t0 in tqdm(C.lag_t0s, desc="variance lag", disable=progress is False):
        sch = Schedule("exp", C.lag_beta_i, t0)
        n = int(t0) + 50
        _, tr = st.simulate_seeds(ik, nk, tg, sch, n, st.Hyper(p.lr, C.lag_batch, p.sampling))
        e3 = float(th.sup_error(th.integrate_ode(x0, sch, n, d_over_batch=dob, **kw), tr)[0])
        e5 = float(th.sup_error(th.integrate_ode5(x5, sch, n, d_over_batch=dob, **kw), tr)[0])
        over = float(np.max(np.asarray(tr.var1[0] * tr.beta[0]) - 1))
        rows.append((t0, e3, e5, over, math.log(1 / C.lag_beta_i) / (p.lr * t0)))
    return LagResult(*(np.array(col, float) for col in zip(*rows)))


def variance_lag(C: OdeCheckConfig, cache=None, refresh: bool = False,
                 progress: bool | None = None) -> LagResult:
    """Fast vs slow annealing: when does the 3-statistic ODE (variances equilibrated) fail?
    Cached on disk (:func:`cache_path`)."""
    return _cached("lag", C, LagResult, cache, refresh, progress=progress)


_EXPERIMENTS = {"validation": _validation, "scan": _scan, "lag": _lag}
# names of the code each cached experiment depends on (hashed into its cache key)
_EXPERIMENT_CODE = {"validation": ("_validation", "ValidationResult"),
                    "scan": ("_scan", "ScanResult"), "lag": ("_lag", "LagResult")}


def start_experiments(C: OdeCheckConfig, workers: int = 2, cache=None) -> dict[str, Future]:
    """Start :func:`error_scan`, :func:`variance_lag` and :func:`validation_run` in background
    threads; returns ``{"scan", "lag", "validation"}`` -> :class:`concurrent.futures.Future`.

    At small sizes the experiments are dominated by XLA compilation (one per schedule, shape
    and flag combination, ~1-3 s each), which runs outside the GIL: two workers use both cores
    of a 2-core machine while the caller goes on (e.g. with the cheap checks). Each result is
    still computed by the same deterministic function and cached on disk, so a rerun only
    loads the files. No progress bars (they would print into whatever cell runs).

    Args:
      C: the chapter's configuration. workers: threads (>= 1). cache: cache folder.
    """
    workers = check_int_at_least("workers", workers, 1)
    # cache keys are computed here, in the calling thread (they read source files)
    specs = {"scan": (ScanResult, {"progress": False}), "lag": (LagResult, {"progress": False}),
             "validation": (ValidationResult, {})}      # longest first (most compilations)
    paths = {kind: cache_path(kind, C, cache) for kind in specs}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ode_check")
    jobs = {kind: pool.submit(_cached, kind, C, cls, cache, False, paths[kind], **kw)
            for kind, (cls, kw) in specs.items()}
    pool.shutdown(wait=False)            # the threads finish the queued jobs and exit
    return jobs
