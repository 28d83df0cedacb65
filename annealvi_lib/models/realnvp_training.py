"""Training of the RealNVP student (:mod:`annealvi_lib.models.realnvp`) by annealed reverse KL,
and one cell of chapter 4's grid.

:func:`train_seeds` minimises ``L_hat = mean_b[beta U(x_b) + log q(x_b)]`` with Adam, beta from a
:class:`~annealvi_lib.models.schedules.Schedule`, as one jit-compiled ``lax.scan`` over steps,
``vmap``-ped over seeds; initialisation and training are a pure function of the key.
:func:`run_realnvp_cell` trains the replicates of one grid cell in blocks of a width fixed by the
configuration and summarises each run (:func:`annealvi_lib.metrics.run_summary`). It lives here,
next to the training it drives, rather than in :mod:`annealvi_lib.experiments.grid`, so that its
code is part of the RealNVP grid's cache key (``grid._SOURCES``) and the grid runner stays
model-agnostic.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .._validate import check_beta, check_int_at_least, check_positive
from .realnvp import FlowSpec, _log_normal, graphdef, init_params, spec_from_config
from .schedules import SCHEDULES, Schedule
from .targets import Target, log_partition, log_prob, make_target

__all__ = ["Trajectory", "FinalStats", "train_seeds", "train", "grid_target",
           "REALNVP_RUN_FIELDS", "run_realnvp_cell", "cell_block_width"]


class Trajectory(NamedTuple):
    """Training records, one entry per block of ``record_every`` steps (block means).

    Attributes (shape (..., n_blocks)):
      step: first step of the block. beta: beta at that step.
      loss: mean training loss ``L_hat`` over the block.
      kl: ``loss + log Z_beta``, the Monte-Carlo KL(q || pi_beta) (exact log Z for a
        :class:`Target`; ``log Z = 0`` for a user log-density).
      proj_mean, proj_std: mean and std of ``<mu*, x>`` over the training batch (block means).
    """

    step: jax.Array
    beta: jax.Array
    loss: jax.Array
    kl: jax.Array
    proj_mean: jax.Array
    proj_std: jax.Array


class FinalStats(NamedTuple):
    """Statistics of the trained flow from ``n_eval`` fresh samples at beta = schedule(n_iter).

    ``proj`` is ``<mu*, x>``; ``log_w = beta log pi(x) - log q(x)`` (importance log-weights);
    ``kl = -mean(log_w) + log Z_beta``.
    """

    proj: jax.Array
    log_w: jax.Array
    kl: jax.Array


@dataclass(frozen=True)
class _UserDensity:
    """Hashable adaptor ``(theta, x) -> f(x)`` for a user log-density ``f``."""

    f: Callable

    def __call__(self, theta, x):
        return self.f(x)


def _zero_log_z(theta, beta):
    return jnp.zeros_like(beta)


def _split_keys(key):
    k_init, k_noise, k_eval = jax.random.split(key, 3)
    return k_init, k_noise, k_eval


@functools.partial(jax.jit, static_argnames=("spec", "lr"))
def _init_jit(keys, *, spec, lr):
    """Per-seed initial parameters, Adam state, noise and evaluation keys (vmapped)."""

    def one(key):
        k_init, k_noise, k_eval = _split_keys(key)
        params = init_params(k_init, spec)
        return params, optax.adam(lr).init(params), k_noise, k_eval

    return jax.vmap(one)(keys)


def _loss_fn(params, z, beta, theta, *, spec, logp):
    """``L_hat = mean_b[-beta log pi(x_b) + log q(x_b)]`` with ``x = f(z)``; aux: x."""
    x, ld = nnx.merge(graphdef(spec), params)(z, beta)
    per = -beta * logp(theta, x) + (_log_normal(z) - ld)
    return jnp.mean(per), x


@functools.partial(jax.jit, static_argnames=(
    "spec", "sched_name", "n_steps", "batch", "lr", "logp", "log_z"), donate_argnums=(0, 1))
def _chunk_jit(params, opt_state, k_noise, start, n_iter, theta, direction, beta_i, t0, *,
               spec, sched_name, n_steps, batch, lr, logp, log_z):
    """Steps ``start .. start + n_steps - 1`` for all seeds (steps ``>= n_iter`` are skipped).

    ``start``, ``n_iter``, ``beta_i``, ``t0`` are traced, so one compilation serves every grid
    cell and every run length. Returns the new carry and per-step records (n_steps, S, 4):
    loss, kl, mean and std of ``<direction, x>`` over the batch (NaN for skipped steps).
    """
    tx = optax.adam(lr)

    def one_seed(p, o, kn, t, beta):
        z = jax.random.normal(jax.random.fold_in(kn, t), (batch, spec.d))
        (loss, x), g = jax.value_and_grad(_loss_fn, has_aux=True)(p, z, beta, theta, spec=spec,
                                                                  logp=logp)
        upd, o = tx.update(g, o, p)
        proj = x @ direction
        rec = jnp.stack([loss, loss + log_z(theta, beta), jnp.mean(proj), jnp.std(proj)])
        return optax.apply_updates(p, upd), o, rec

    def body(carry, t):
        p, o = carry
        beta = SCHEDULES[sched_name](t, beta_i=beta_i, t0=t0)

        def run(args):
            p, o = args
            p, o, rec = jax.vmap(one_seed, in_axes=(0, 0, 0, None, None))(p, o, k_noise, t, beta)
            return (p, o), rec

        def skip(args):
            return args, jnp.full((k_noise.shape[0], 4), jnp.nan, jnp.float32)

        # the predicate is shared by all seeds, so this stays a real branch (no wasted work)
        return jax.lax.cond(t < n_iter, run, skip, (p, o))

    (params, opt_state), recs = jax.lax.scan(body, (params, opt_state),
                                             start + jnp.arange(n_steps))
    return params, opt_state, recs


@functools.partial(jax.jit, static_argnames=("spec", "n_eval", "logp", "log_z"))
def _eval_jit(params, k_eval, theta, direction, beta, *, spec, n_eval, logp, log_z):
    """Final statistics from ``n_eval`` fresh samples per seed (vmapped)."""

    def one(p, k):
        z = jax.random.normal(k, (n_eval, spec.d))
        x, ld = nnx.merge(graphdef(spec), p)(z, beta)
        log_w = beta * logp(theta, x) - (_log_normal(z) - ld)
        return FinalStats(proj=x @ direction, log_w=log_w,
                          kl=-jnp.mean(log_w) + log_z(theta, beta))

    return jax.vmap(one)(params, k_eval)


def train_seeds(keys: jax.Array, spec: FlowSpec, schedule: Schedule, n_iter: int, *,
                target: Target | None = None, log_density: Callable | None = None,
                direction=None, batch: int = 1024, lr: float = 1e-3, record_every: int = 10,
                n_eval: int = 4096, chunk_steps: int = 100):
    """Initialise and train one flow per key (vmapped), along ``schedule``.

    Each key is split into (init, noise, eval) keys, so a run depends on its key only (not on
    the other keys of the batch). Step ``t`` uses ``beta = schedule(t)``; after ``n_iter`` steps
    ``n_eval`` fresh samples are drawn at ``beta = schedule(n_iter)``.

    Args:
      keys: typed PRNG keys, shape (S,).
      spec: flow architecture.
      schedule: the annealing schedule (its beta_i, t0 are traced: changing them does not
        recompile; only the name is static).
      n_iter: number of Adam steps (>= 1).
      target: a :class:`Target` (log pi, mu* for the projection and the exact log Z_beta), or
      log_density: any callable ``x (..., d) -> log-density (...)`` (then ``log Z_beta := 0``;
        the recorded "kl" is exact for a normalised density at beta = 1). Give exactly one.
      direction: projection direction, shape (d,) (default: ``target.mu_star``, else e_1).
      batch: samples per step B (>= 1). lr: Adam learning rate (> 0).
      record_every: trajectory block length in steps (>= 1, <= n_iter).
      n_eval: samples of the final evaluation (>= 2).
      chunk_steps: steps per compiled ``lax.scan`` call (>= 1). Step count, beta_i and t0 are
        traced, so the whole grid shares one compilation per (architecture, batch, lr).
    Returns:
      ``(params, Trajectory, FinalStats)``, each with a leading seed axis S.
    """
    n_iter = check_int_at_least("n_iter", n_iter, 1)
    batch = check_int_at_least("batch", batch, 1)
    lr = check_positive("lr", lr)
    record_every = check_int_at_least("record_every", record_every, 1)
    if record_every > n_iter:
        raise ValueError(f"record_every must be in [1, n_iter={n_iter}], got {record_every}")
    n_eval = check_int_at_least("n_eval", n_eval, 2)
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be an annealvi_lib.models.schedules.Schedule, got {schedule!r}")
    if (target is None) == (log_density is None):
        raise ValueError("give exactly one of target (a Target) or log_density (a callable)")
    if target is not None:
        if target.d != spec.d:
            raise ValueError(f"target dimension {target.d} must equal spec.d = {spec.d}")
        theta, logp, log_z = target, log_prob, log_partition
        if direction is None:
            direction = target.mu_star
    else:
        if not callable(log_density):
            raise ValueError("log_density must be a callable x -> log-density")
        theta, logp, log_z = None, _UserDensity(log_density), _zero_log_z
        if direction is None:
            direction = jnp.zeros(spec.d).at[0].set(1.0)
    direction = jnp.asarray(direction, jnp.float32)
    if direction.shape != (spec.d,):
        raise ValueError(f"direction must have shape ({spec.d},), got {direction.shape}")
    keys = jnp.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"keys must be a 1-D array of PRNG keys, got shape {keys.shape}")
    chunk_steps = check_int_at_least("chunk_steps", chunk_steps, 1)
    n_steps = min(chunk_steps, n_iter)
    statics = dict(spec=spec, logp=logp, log_z=log_z)
    beta_i, t0 = jnp.float32(schedule.beta_i), jnp.float32(schedule.t0)

    params, opt_state, k_noise, k_eval = _init_jit(keys, spec=spec, lr=lr)
    recs = []
    # a Python loop over chunks of steps: dispatch is asynchronous, nothing is read back here
    for start in range(0, n_iter, n_steps):
        params, opt_state, rec = _chunk_jit(
            params, opt_state, k_noise, jnp.int32(start), jnp.int32(n_iter), theta, direction,
            beta_i, t0, sched_name=schedule.name, n_steps=n_steps, batch=batch, lr=lr, **statics)
        recs.append(rec)
    recs = jnp.concatenate(recs)[:n_iter]                       # (n_iter, S, 4)
    n_blocks = n_iter // record_every
    blocks = recs[:n_blocks * record_every].reshape(n_blocks, record_every, -1, 4).mean(axis=1)
    blocks = jnp.moveaxis(blocks, 0, 1)                          # (S, n_blocks, 4)
    starts = jnp.arange(n_blocks) * record_every
    betas = schedule(starts)
    traj = Trajectory(step=jnp.broadcast_to(starts, blocks.shape[:2]),
                      beta=jnp.broadcast_to(betas, blocks.shape[:2]),
                      loss=blocks[..., 0], kl=blocks[..., 1], proj_mean=blocks[..., 2],
                      proj_std=blocks[..., 3])
    final = _eval_jit(params, k_eval, theta, direction, schedule(n_iter), n_eval=n_eval, **statics)
    return params, traj, final


def train(key: jax.Array, spec: FlowSpec, schedule: Schedule, n_iter: int, **kwargs):
    """One run of :func:`train_seeds` (same arguments, a single key); no seed axis in outputs."""
    out = train_seeds(jnp.asarray(key)[None], spec, schedule, n_iter, **kwargs)
    return jax.tree.map(lambda a: a[0], out)


#: Per-run fields returned by :func:`run_realnvp_cell` (and cached by :mod:`annealvi_lib.experiments.grid`).
REALNVP_RUN_FIELDS = ("collapsed", "failed", "proj_std", "proj_mean", "mass_plus", "ess", "kl")


def grid_target(cfg, master_seed: int) -> Target:
    """The RealNVP study's target: random mu* fixed by ``master_seed`` alone (same on all cells)."""
    from ..seeding import run_keys

    key = run_keys(int(master_seed), ("mu_star",), np.array([0]))[0]
    return make_target(cfg.d, cfg.R, cfg.w_star, key=key)


def run_realnvp_cell(cfg, beta_i: float, t0: float, replicates: np.ndarray,
                     master_seed: int) -> dict[str, np.ndarray]:
    """Train ``len(replicates)`` flows at one grid cell and classify them.

    Run ``r``'s key is ``seeding.run_keys(master_seed, ("realnvp", beta_i, t0), [r])``, so a
    run does not depend on which other replicates are in the call. The replicates are processed
    in blocks of :func:`cell_block_width` runs (the last one padded), so every run goes through
    the same compiled program. The schedule is exponential, ``n_iter = t0 + cfg.n_iter_extra``.
    Blocks are spread over ``jax.local_devices()``.

    Args:
      cfg: a :class:`~annealvi_lib.config.RealNVPGridConfig`.
      beta_i: initial inverse temperature in (0, 1].
      t0: annealing time in steps (> 0, integer-valued).
      replicates: replicate indices, integer array (n,).
      master_seed: the experiment's master seed (fixes mu* and all runs).
    Returns:
      dict of arrays of shape (n,): ``collapsed``, ``failed`` (bool), ``proj_std``, ``proj_mean``,
      ``mass_plus``, ``ess``, ``kl`` (see :func:`annealvi_lib.metrics.run_summary`).
    """
    from ..metrics import divergence_limits, run_summary
    from ..seeding import run_keys

    beta_i = check_beta("beta_i", beta_i)
    t0 = check_positive("t0", t0)
    if not float(t0).is_integer():
        raise ValueError(f"t0 must be a whole number of steps, got {t0!r}")
    reps = np.asarray(replicates)
    if reps.ndim != 1 or reps.size == 0 or not np.issubdtype(reps.dtype, np.integer) \
            or np.any(reps < 0):
        raise ValueError(f"replicates must be a non-empty 1-D array of integers >= 0, got {replicates!r}")
    spec = spec_from_config(cfg)
    target = grid_target(cfg, master_seed)
    schedule = Schedule("exp", beta_i, t0)
    n_iter = int(t0) + int(cfg.n_iter_extra)
    keys = run_keys(int(master_seed), ("realnvp", float(beta_i), float(t0)), reps)
    # every block has the same width, a function of the configuration only (the last block is
    # padded by repeating its last run, then dropped): every run of the configuration goes
    # through one compiled program, whatever replicates are asked for -- so a subset of a
    # cell's replicates reproduces the full cell's rows bit for bit, by construction
    from ..seeding import padded_blocks

    width = cell_block_width(cfg)
    # blocks go round-robin to the local devices (all GPUs of a machine) and are all dispatched
    # before any result is read back, so the devices work concurrently
    devices = jax.local_devices()
    pending = []
    for b, (idx, keep) in enumerate(padded_blocks(reps.size, width)):
        block_keys = jax.device_put(keys[idx], devices[b % len(devices)])
        _, _, fin = train_seeds(block_keys, spec, schedule, n_iter, target=target,
                                batch=cfg.batch, lr=cfg.lr, record_every=n_iter,
                                n_eval=int(getattr(cfg, "n_eval", 4096)))
        pending.append((fin, keep))
    projs = [np.asarray(fin.proj)[:keep] for fin, keep in pending]
    lws = [np.asarray(fin.log_w)[:keep] for fin, keep in pending]
    limits = divergence_limits(cfg.d, cfg.R, cfg.w_star, float(schedule(n_iter)))
    return run_summary(np.concatenate(projs), np.concatenate(lws), **limits)


def cell_block_width(cfg) -> int:
    """Runs per compiled training call of a grid configuration: ``cfg.seed_chunk`` (0: all
    ``cfg.n_seeds`` at once). Depends on the configuration only, never on which replicates a
    call asks for."""
    chunk = int(getattr(cfg, "seed_chunk", 0))
    return chunk if chunk > 0 else int(cfg.n_seeds)
