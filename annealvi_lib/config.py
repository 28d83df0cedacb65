"""Presets: validated experiment sizes for ``quick`` (tests, CI), ``book`` (the default book
build on a 2-core CPU) and ``paper`` (the paper's protocol).

Every experiment of the book reads its sizes from one :class:`Preset`. The active preset of a
notebook comes from the environment variable ``ANNEALVI_PRESET`` (default ``book``), see
:func:`active_preset`. All dataclasses are frozen and validate every field on construction, so a
bad configuration fails before any computation, with a message naming the field.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from ._validate import (MAX_SEED, MAX_SEEDS, MAX_STEPS, check_beta, check_bool, check_choice,
                        check_finite, check_int_at_least, check_int_range, check_open_unit,
                        check_positive, check_sequence, check_t0)

__all__ = [
    "PRESET_NAMES",
    "SAMPLINGS",
    "MIN_GRID_BETA",
    "grid_beta",
    "Problem",
    "DemoConfig",
    "OdeCheckConfig",
    "GMMGridConfig",
    "RealNVPGridConfig",
    "DesignConfig",
    "Preset",
    "get_preset",
    "active_preset",
]

PRESET_NAMES = ("quick", "book", "paper")
#: names of annealvi_lib.models.schedules.SCHEDULES (repeated here so that the configuration does not
#: import JAX; a test checks that the two agree)
SCHEDULE_NAMES = ("exp", "step", "constant", "linear_beta", "linear_temperature")
#: the annealing families compared in chapter 5 (every schedule but the constant one)
FAMILIES = tuple(n for n in SCHEDULE_NAMES if n != "constant")
#: Monte-Carlo sampling protocols of the GMM loss (re-exported as
#: ``annealvi_lib.models.student.SAMPLINGS``; defined here so that the configuration does not import JAX).
SAMPLINGS = ("stratified", "categorical")


@dataclass(frozen=True)
class Problem:
    """The target and the optimiser shared by every GMM-student experiment.

    Attributes:
      d: dimension (>= 2). R: mode distance (> 0). w_star: heavy-mode weight in (0, 1).
      lr: JKO learning rate eta (> 0).
      batch: Monte-Carlo batch B (>= 1): samples per component with ``sampling="stratified"``,
        samples in total with ``sampling="categorical"``.
      sampling: Monte-Carlo protocol of the loss, ``"stratified"`` (B samples from each
        component) or ``"categorical"`` (the official code's: B samples from the student with
        labels drawn from its weights); see :class:`annealvi_lib.models.student.Hyper`.
    """

    d: int = 512
    R: float = 3.0
    w_star: float = 0.8
    lr: float = 0.05
    batch: int = 1024
    sampling: str = "stratified"

    def __post_init__(self):
        _normalise(self, d=_int_at_least(2), R=check_positive, w_star=check_open_unit,
                   lr=check_positive, batch=_int_at_least(1),
                   sampling=lambda n, v: check_choice(n, v, SAMPLINGS))


def _normalise(obj, **checks) -> None:
    """Validate and normalise fields of a frozen dataclass in place: ``field=check`` where
    ``check(name, value)`` returns the normalised value or raises ``ValueError``."""
    for name, check in checks.items():
        object.__setattr__(obj, name, check(name, getattr(obj, name)))


def _int_at_least(minimum):
    return lambda name, v: check_int_at_least(name, v, minimum)


def _int_range(minimum, maximum):
    return lambda name, v: check_int_range(name, v, minimum, maximum)


def _seq(item_check, min_len=1):
    return lambda name, v: check_sequence(name, v, item_check, min_len=min_len)





def _log10(name, v):
    """A finite base-10 exponent of a grid axis (|k| <= 300; the betas it gives are checked
    separately)."""
    k = check_finite(name, v)
    if abs(k) > 300:
        raise ValueError(f"{name} must be a base-10 exponent in [-300, 300], got {v!r}")
    return k


def _cell(name, v):
    """A side-study cell ``(log10(beta_i R^2), t0)``."""
    pair = check_sequence(name, v)
    if len(pair) != 2:
        raise ValueError(f"{name} entries must be pairs (log10(beta_i R^2), t0), got {v!r}")
    return (_log10(name, pair[0]), check_t0(name, pair[1]))


def _beta_cell(name, v):
    """A side-study cell ``(beta_i, t0)`` with beta_i in [MIN_GRID_BETA, 1] and t0 > 0."""
    pair = check_sequence(name, v)
    if len(pair) != 2:
        raise ValueError(f"{name} entries must be pairs (beta_i, t0), got {v!r}")
    b = check_finite(name, pair[0])
    if not MIN_GRID_BETA <= b <= 1:
        raise ValueError(f"{name}: beta_i must lie in [{MIN_GRID_BETA:g}, 1], got {pair[0]!r}")
    return (b, check_t0(name, pair[1]))


_SEED = _int_range(0, MAX_SEED)
_N_SEEDS = _int_range(1, MAX_SEEDS)
_STEPS = _int_range(1, MAX_STEPS)
_EXTRA = _int_range(0, MAX_STEPS)


#: Smallest initial inverse temperature of a grid: the student starts with variance 1/beta_i,
#: and float32 runs from far hotter starts carry variances no physical check can bound.
MIN_GRID_BETA = 1e-8


def _check_betas(name, values):
    for v in values:
        if check_beta(name, v) < MIN_GRID_BETA:
            raise ValueError(f"{name} must lie in [{MIN_GRID_BETA:g}, 1] for a grid, got {v!r}")
    return tuple(float(v) for v in values)


def _check_t0s(name, values):
    return check_sequence(name, values, check_t0)


def grid_beta(log10_value: float, scale: float) -> float:
    """The grid's ``beta_i = 10**log10_value / scale`` (scale R^2, or 9 for RealNVP), rounded to
    12 significant digits so that a beta given on the command line comes back as asked (0.01,
    not 0.009999999999999998 after the round trip through log10). Every grid row and side-study
    cell is computed by this function."""
    return float(f"{10.0**log10_value / scale:.12g}")


@dataclass(frozen=True, kw_only=True)
class _AnnealedRun:
    """Fields shared by chapters 1 and 2, which anneal one problem with the exponential schedule
    from ``beta_i = 1 / (beta_i_factor R^2)`` to 1 at ``t0``; each chapter's class gives its own
    default ``problem``."""

    problem: Problem
    beta_i_factor: float = 10.0          # beta_i = 1 / (beta_i_factor * R^2)
    t0: float = 700.0

    def _check_annealing(self):
        _check_problem(self)
        _normalise(self, beta_i_factor=check_positive, t0=check_t0)
        if self.beta_i_factor * self.problem.R**2 < 1:
            raise ValueError(f"beta_i_factor must be >= 1/R^2 = {1 / self.problem.R**2:.4g} "
                             f"(beta_i in (0, 1]), got {self.beta_i_factor!r}")

    @property
    def beta_i(self) -> float:
        """The initial inverse temperature ``1 / (beta_i_factor R^2)``."""
        return 1.0 / (self.beta_i_factor * self.problem.R**2)


@dataclass(frozen=True, kw_only=True)
class DemoConfig(_AnnealedRun):
    """Chapter 1's opening experiment (vanilla, covering init, annealed)."""

    problem: Problem = Problem(d=128, batch=1024)
    # the paper stops vanilla runs after 100 steps; at d = 128 the covering arm is still
    # undecided then (final |s| near 0), and every run has settled by 400 (chapter 1 reports both)
    n_iter_vanilla: int = 400
    n_iter_annealed: int = 800
    covering_var_factor: float = 10.0    # covering init: sigma^2(0) = factor * R^2
    seed: int = 0

    def __post_init__(self):
        self._check_annealing()
        _normalise(self, n_iter_vanilla=_STEPS, n_iter_annealed=_STEPS,
                   covering_var_factor=check_positive, seed=_SEED)


@dataclass(frozen=True, kw_only=True)
class OdeCheckConfig(_AnnealedRun):
    """Chapter 2: ODE against simulation, and the error scaling with d and B."""

    problem: Problem = Problem(d=512, batch=1024)
    n_iter: int = 800
    dims: tuple = (64, 128, 256, 512, 1024, 2048)
    batches: tuple = (64, 256, 1024, 4096)
    n_seeds: int = 8
    seed: int = 0
    # error-scaling scans: shorter exp schedule (beta_i as above), d-scan at fixed scan_batch,
    # B-scan (over ``batches``) at fixed scan_d
    scan_t0: float = 400.0
    scan_n_iter: int = 450
    scan_batch: int = 1024
    scan_d: int = 32
    # variance lag: slow vs fast annealing from beta_i = lag_beta_i (n_iter = t0 + 50)
    lag_beta_i: float = 1e-3
    lag_t0s: tuple = (100.0, 800.0)
    lag_d: int = 256
    lag_batch: int = 1024

    def __post_init__(self):
        self._check_annealing()
        _normalise(self, n_iter=_STEPS, n_seeds=_N_SEEDS, seed=_SEED, scan_t0=check_t0, scan_n_iter=_STEPS, scan_batch=_int_at_least(1),
                   scan_d=_int_at_least(3), lag_beta_i=check_beta, lag_t0s=_seq(check_t0),
                   lag_d=_int_at_least(3), lag_batch=_int_at_least(1),
                   dims=_seq(_int_at_least(2)), batches=_seq(_int_at_least(1)))


@dataclass(frozen=True)
class GMMGridConfig:
    """Chapter 3: Monte-Carlo collapse grid of the GMM student.

    ``beta_i = 10**k / R^2`` for ``k`` in ``log10_beta_r2``; ``t0`` in ``t0s``; ``n_iter = t0 +
    n_iter_extra`` steps per run; ``n_seeds`` replicates per cell.
    """

    problem: Problem = Problem(d=512, batch=1024)
    log10_beta_r2: tuple = (-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5)
    t0s: tuple = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0)
    n_seeds: int = 100
    n_iter_extra: int = 100
    sampler: str = "fast"
    seed: int = 0
    # schedule family of every cell (annealvi_lib.models.schedules.SCHEDULES; chapter 3 uses the
    # paper's exponential one, chapter 5 compares the others)
    schedule: str = "exp"
    # fast-vs-exact validation: cells as (log10(beta_i R^2), t0) and seeds per cell
    validation_cells: tuple = ((-3.0, 100.0), (-2.0, 400.0), (-1.0, 800.0), (0.0, 300.0))
    validation_seeds: int = 200
    # sensitivity of the collapse rate to the batch size B and to the steps after t0
    sensitivity_cells: tuple = ((-2.0, 200.0), (-1.0, 500.0))
    sensitivity_batches: tuple = (64, 256, 1024, 4096, 8192)
    sensitivity_extras: tuple = (100, 400)
    sensitivity_seeds: int = 200
    # ODE-propagated theory: initial conditions per cell
    ode_samples: int = 4096
    # practical guidance: target probability and seeds of its Monte-Carlo check
    guidance_p: float = 0.1
    guidance_seeds: int = 400
    # no-annealing row (beta = 1 throughout, variance 1 at the start): dimensions, seeds, steps
    vanilla_dims: tuple = (128, 512)
    vanilla_seeds: int = 400
    vanilla_steps: int = 400
    # finite-batch theory: simulated runs per cell
    stochastic_samples: int = 2048
    # batch-size scan on one (hot) row: log10(beta_i R^2), annealing times, batch sizes (the
    # problem's sampling convention), seeds per point
    bscan_log10: float = -3.0
    bscan_t0s: tuple = (100.0, 200.0, 400.0)
    bscan_batches: tuple = (256, 1024, 4096, 16384)
    bscan_seeds: int = 200

    def __post_init__(self):
        _check_problem(self)
        _normalise(self, log10_beta_r2=_seq(_log10), t0s=_seq(check_t0), n_seeds=_N_SEEDS,
                   n_iter_extra=_EXTRA, sampler=lambda n, v: check_choice(n, v, ("exact", "fast")),
                   seed=_SEED, schedule=lambda n, v: check_choice(n, v, SCHEDULE_NAMES), validation_cells=_seq(_cell), validation_seeds=_N_SEEDS,
                   sensitivity_cells=_seq(_cell), sensitivity_batches=_seq(_int_at_least(1)),
                   sensitivity_extras=_seq(_EXTRA), sensitivity_seeds=_N_SEEDS,
                   ode_samples=_int_range(1, 10**7), guidance_p=check_open_unit,
                   guidance_seeds=_N_SEEDS, vanilla_dims=_seq(_int_at_least(4)),
                   vanilla_seeds=_N_SEEDS, vanilla_steps=_int_range(2, MAX_STEPS),
                   stochastic_samples=_int_range(1, 10**7), bscan_log10=_log10,
                   bscan_t0s=_seq(check_t0), bscan_batches=_seq(_int_at_least(1)),
                   bscan_seeds=_N_SEEDS)
        _check_betas("beta_i", self.beta_is)
        for k, t0 in self.validation_cells + self.sensitivity_cells:
            check_beta("beta_i", grid_beta(k, self.problem.R**2))
        for t0 in self.t0s:
            _check_run_length(t0, self.n_iter_extra)

    @property
    def beta_is(self) -> tuple:
        return tuple(grid_beta(k, self.problem.R**2) for k in self.log10_beta_r2)


@dataclass(frozen=True)
class RealNVPGridConfig:
    """Chapter 4: RealNVP student (architecture, optimiser and collapse grid)."""

    d: int = 128
    R: float = 3.0
    w_star: float = 0.8
    n_layers: int = 8
    width: int = 512
    depth: int = 3
    batch: int = 1024
    lr: float = 1e-3
    log10_beta_9: tuple = (-1.25, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75)
    include_beta_one: bool = True
    t0s: tuple = tuple(float(t) for t in range(200, 2001, 200))
    n_seeds: int = 200
    n_iter_extra: int = 200
    seed: int = 0
    norm: str = "beta"             # conditioner input normalisation (realnvp.NORMS)
    out_init_scale: float = 0.1    # last-layer init scale: flow starts near the identity
    init: str = "small_output"     # weight initialisation (realnvp.INITS)
    n_eval: int = 4096             # fresh flow samples for the final metrics
    # runs per compiled training call (0: all n_seeds at once); fixed by the configuration, so
    # any subset of a cell's replicates reproduces its rows bit for bit; bounds memory
    seed_chunk: int = 50
    # dimension trend (chapter 4): the same flow at each d of trend_dims on the cells
    # (beta_i, t0) of trend_cells, trend_seeds runs each
    trend_dims: tuple = (8, 16, 32, 64, 128)
    trend_cells: tuple = ((1.0, 2000.0), (0.0351364184463, 500.0), (0.0351364184463, 2000.0),
                          (0.351364184463, 2000.0))
    trend_seeds: int = 200
    # runs per arm of the normalisation and initialisation comparisons
    compare_seeds: int = 200

    def __post_init__(self):
        _normalise(self, d=_int_at_least(2), R=check_positive, w_star=check_open_unit,
                   n_layers=_int_at_least(1), width=_int_at_least(1), depth=_int_at_least(1),
                   batch=_int_at_least(1), lr=check_positive,
                   log10_beta_9=_seq(_log10, min_len=0), include_beta_one=check_bool,
                   t0s=_seq(check_t0), n_seeds=_N_SEEDS, n_iter_extra=_EXTRA, seed=_SEED,
                   norm=lambda n, v: check_choice(n, v, ("beta", "batch", "none")),
                   out_init_scale=_nonnegative, n_eval=_int_at_least(2),
                   seed_chunk=_int_at_least(0),
                   init=lambda n, v: check_choice(n, v, ("small_output", "torch")),
                   trend_dims=_seq(_int_at_least(2)), trend_cells=_seq(_beta_cell),
                   trend_seeds=_N_SEEDS, compare_seeds=_N_SEEDS)
        if not self.beta_is:
            raise ValueError("log10_beta_9 must give at least one beta_i <= 1 (or set "
                             "include_beta_one=True)")
        _check_betas("beta_i", self.beta_is)
        for t0 in self.t0s:
            if not t0.is_integer():
                raise ValueError(f"t0s must be whole numbers of steps, got {t0!r}")
            _check_run_length(t0, self.n_iter_extra)

    @property
    def beta_is(self) -> tuple:
        b = [grid_beta(k, 9.0) for k in self.log10_beta_9]
        b = [v for v in b if v <= 1.0]
        if self.include_beta_one:
            b.append(1.0)
        return tuple(b)


def _target(name, v):
    """An (R, w_star) pair: R > 0, w_star in (0, 1)."""
    try:
        R, w = v
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold (R, w_star) pairs, got {v!r}") from None
    return (check_positive(f"{name} R", R), check_open_unit(f"{name} w_star", w))


def _setting(name, v):
    """A recommender setting (d, R, w_star, p, schedule): d >= 33, R > 0, w_star in (0.5, 1),
    p in (0, 1), schedule a family or ``best``."""
    try:
        d, R, w, p, sched = v
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold (d, R, w_star, p, schedule) tuples, got {v!r}") from None
    w = check_open_unit(f"{name} w_star", w)
    if w <= 0.5:
        raise ValueError(f"{name} w_star must lie in (0.5, 1), got {w!r}")
    return (check_int_at_least(f"{name} d", d, 33), check_positive(f"{name} R", R), w,
            check_open_unit(f"{name} p", p),
            check_choice(f"{name} schedule", sched, FAMILIES + ("best",)))


@dataclass(frozen=True)
class DesignConfig:
    """Chapter 5: schedule design (families, dimension and target scaling, the recommender).

    Cells are ``(log10(beta_i R^2), t0)`` pairs as in chapter 3; every run lasts ``t0 +
    n_iter_extra`` steps; the no-annealing row runs ``vanilla_steps`` steps at beta = 1.
    """

    problem: Problem = Problem(d=512, batch=1024)
    families: tuple = FAMILIES
    budgets: tuple = (200.0, 400.0, 800.0)
    # beta_i R^2 = 10^k scanned for each family's theory-optimal beta_i
    log10_beta_scan: tuple = tuple(-3.0 + 0.25 * k for k in range(15))
    # steps at beta = 1 after t0: long enough for the runs to settle (the variance started at
    # 1/beta_i relaxes for ~100-200 steps after beta reaches 1; every table reports the
    # fraction of runs still undecided when they stop)
    n_iter_extra: int = 500
    theory_samples: int = 2048
    family_seeds: int = 400
    dims: tuple = (64, 256, 1024, 4096, 16384)
    dim_cells: tuple = ((-2.0, 200.0), (-1.0, 400.0), (-1.0, 800.0))
    dim_seeds: int = 200
    vanilla_steps: int = 800
    targets: tuple = ((2.0, 0.6), (2.0, 0.8), (2.0, 0.95), (3.0, 0.6), (3.0, 0.8), (3.0, 0.95),
                      (4.0, 0.6), (4.0, 0.8), (4.0, 0.95))
    target_cells: tuple = ((-2.0, 400.0), (-1.0, 400.0))
    target_seeds: int = 200
    # recommender checks: (d, R, w_star, p, schedule family or "best"); batch and learning
    # rate are the problem's
    recommend_settings: tuple = ((512, 3.0, 0.8, 0.1, "exp"), (1024, 3.0, 0.8, 0.05, "exp"),
                                 (256, 2.5, 0.7, 0.2, "step"), (2048, 3.5, 0.9, 0.1, "best"),
                                 (128, 4.0, 0.85, 0.3, "linear_temperature"),
                                 (768, 2.0, 0.6, 0.15, "linear_beta"),
                                 (4096, 3.0, 0.95, 0.2, "exp"), (512, 3.0, 0.8, 0.02, "best"))
    verify_seeds: int = 400
    max_t0: float = 6400.0
    seed: int = 0

    def __post_init__(self):
        _check_problem(self)
        _normalise(self, families=_seq(lambda n, v: check_choice(n, v, FAMILIES)),
                   budgets=_seq(check_t0),
                   log10_beta_scan=_seq(_log10), n_iter_extra=_EXTRA,
                   theory_samples=_int_range(16, 10**6), family_seeds=_N_SEEDS,
                   dims=_seq(_int_at_least(33)), dim_cells=_seq(_cell), dim_seeds=_N_SEEDS,
                   vanilla_steps=_int_range(2, MAX_STEPS), targets=_seq(_target),
                   target_cells=_seq(_cell), target_seeds=_N_SEEDS,
                   recommend_settings=_seq(_setting),
                   verify_seeds=_N_SEEDS, max_t0=check_t0, seed=_SEED)
        if self.problem.d < 33:
            raise ValueError(f"problem.d must be >= 33 (the finite-batch theory), got "
                             f"{self.problem.d}")
        for R, _ in self.targets + ((self.problem.R, None),):
            for k in self.log10_beta_scan:
                check_beta("log10_beta_scan", grid_beta(k, R**2))
        for t0 in self.budgets + tuple(t for _, t in self.dim_cells + self.target_cells):
            _check_run_length(t0, self.n_iter_extra)
        if self.vanilla_steps <= self.n_iter_extra:
            raise ValueError(f"vanilla_steps must be > n_iter_extra = {self.n_iter_extra}, got "
                             f"{self.vanilla_steps}")


def _nonnegative(name, v):
    x = check_finite(name, v)
    if x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return x


def _check_problem(cfg) -> None:
    if not isinstance(cfg.problem, Problem):
        raise ValueError(f"problem must be an annealvi_lib.config.Problem, got {cfg.problem!r}")


def _check_run_length(t0: float, extra: int) -> None:
    """A run has ``round(t0) + extra`` steps: at most MAX_STEPS."""
    if int(round(t0)) + extra > MAX_STEPS:
        raise ValueError(f"t0 + n_iter_extra must be at most {MAX_STEPS} steps, got "
                         f"{t0:g} + {extra}")


@dataclass(frozen=True)
class Preset:
    """All experiment sizes of one preset."""

    name: str
    demo: DemoConfig = field(default_factory=DemoConfig)
    ode_check: OdeCheckConfig = field(default_factory=OdeCheckConfig)
    gmm_grid: GMMGridConfig = field(default_factory=GMMGridConfig)
    realnvp_grid: RealNVPGridConfig = field(default_factory=RealNVPGridConfig)
    design: DesignConfig = field(default_factory=DesignConfig)

    def __post_init__(self):
        check_choice("preset", self.name, PRESET_NAMES)

    def to_dict(self) -> dict:
        return asdict(self)


def _paper() -> Preset:
    # the GMM grid follows the official code's protocol: n_batch = 8192 samples in total per
    # step, component labels drawn from the weights (DESIGN section 5)
    return Preset(name="paper",
                  gmm_grid=GMMGridConfig(problem=Problem(d=512, batch=8192,
                                                         sampling="categorical")))


def _book() -> Preset:
    return Preset(
        name="book",
        demo=DemoConfig(problem=Problem(d=128, batch=1024)),
        ode_check=OdeCheckConfig(problem=Problem(d=512, batch=1024),
                                 dims=(32, 64, 128, 256), batches=(128, 512, 2048, 8192),
                                 n_seeds=4),
        # the paper's grid itself (100 seeds); the side studies are reduced: the exact O(B d)
        # sampler costs ~6-11 ms per seed-step, so its validation uses 3 short cells x 48 seeds
        # (the book budget of DEVELOPERS.md: a cold build within 15 minutes)
        gmm_grid=GMMGridConfig(problem=Problem(d=512, batch=1024), n_seeds=100,
                               validation_cells=((-3.0, 100.0), (-1.0, 200.0), (0.0, 100.0)),
                               validation_seeds=48, sensitivity_batches=(64, 256, 1024),
                               sensitivity_seeds=100, guidance_seeds=200),
        # the paper's beta_i rows and 8 coupling layers (what the hottest row needs, with
        # margin: realnvp.capacity_table), a narrower conditioner (2 x 32), batch 128, d = 32,
        # five t0, 48 seeds: about half an hour on 2 cores, so the book reads it from the
        # archive data/realnvp_grid (python -m annealvi_lib realnvp-archive grid)
        realnvp_grid=RealNVPGridConfig(
            d=32, width=32, depth=2, n_layers=8, batch=128,
            t0s=(200.0, 500.0, 1000.0, 1500.0, 2000.0),
            n_seeds=48, n_iter_extra=200, n_eval=2048, seed_chunk=25,
            trend_dims=(8, 16, 32, 64), trend_seeds=48, compare_seeds=150),
        # chapter 5 at full size: about 20 minutes on 2 cores, so the book reads it from the
        # archive data/schedule_design (python -m annealvi_lib design-archive)
        design=DesignConfig(),
    )


def _quick() -> Preset:
    return Preset(
        name="quick",
        demo=DemoConfig(problem=Problem(d=32, batch=128), n_iter_vanilla=80,
                        n_iter_annealed=160, t0=120.0),
        ode_check=OdeCheckConfig(problem=Problem(d=64, batch=128), t0=120.0, n_iter=160,
                                 dims=(16, 32), batches=(64, 256), n_seeds=4,
                                 scan_t0=60.0, scan_n_iter=80, scan_batch=256, scan_d=16,
                                 lag_t0s=(20.0, 300.0), lag_d=32, lag_batch=128),
        gmm_grid=GMMGridConfig(problem=Problem(d=64, batch=128),
                               log10_beta_r2=(-2.0, 0.5), t0s=(50.0, 150.0),
                               n_seeds=16, n_iter_extra=30,
                               validation_cells=((-2.0, 50.0), (0.0, 150.0)),
                               validation_seeds=16, sensitivity_cells=((-2.0, 50.0),),
                               sensitivity_batches=(32, 128), sensitivity_extras=(30, 60),
                               sensitivity_seeds=16, ode_samples=512, guidance_p=0.2,
                               guidance_seeds=32, vanilla_dims=(16, 64), vanilla_seeds=32,
                               vanilla_steps=120, stochastic_samples=256, bscan_log10=-2.0,
                               bscan_t0s=(50.0,), bscan_batches=(32, 128), bscan_seeds=16),
        realnvp_grid=RealNVPGridConfig(
            d=4, width=16, depth=1, n_layers=8, batch=64, log10_beta_9=(-1.0, 0.5),
            t0s=(20.0, 40.0), n_seeds=2, n_iter_extra=10, seed_chunk=2,
            trend_dims=(4,), trend_cells=((1.0, 20.0), (0.0111111111111, 20.0),
                                            (0.0111111111111, 40.0), (0.351364184463, 20.0)),
            trend_seeds=2, compare_seeds=2),
        design=DesignConfig(problem=Problem(d=64, batch=128), budgets=(60.0, 120.0),
                            log10_beta_scan=(-2.0, -1.0, 0.0), n_iter_extra=100,
                            theory_samples=256, family_seeds=24, dims=(64, 256),
                            dim_cells=((-1.0, 120.0),), dim_seeds=16, vanilla_steps=200,
                            targets=((2.0, 0.6), (3.0, 0.8)), target_cells=((-1.0, 120.0),),
                            target_seeds=16, recommend_settings=((64, 3.0, 0.8, 0.3, "exp"),),
                            verify_seeds=24, max_t0=800.0),
    )


_PRESETS = {"quick": _quick, "book": _book, "paper": _paper}


def get_preset(name: str) -> Preset:
    """Return the named preset (``quick``, ``book`` or ``paper``); raises on an unknown name."""
    check_choice("preset", name, PRESET_NAMES)
    return _PRESETS[name]()


def active_preset() -> Preset:
    """The preset selected by ``ANNEALVI_PRESET`` (default ``book``)."""
    return get_preset(os.environ.get("ANNEALVI_PRESET", "book"))
