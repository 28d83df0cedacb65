"""RealNVP normalizing-flow student (flax.nnx) trained by annealed reverse KL.

The flow maps standard normal noise ``z`` to ``x = f(z)`` through ``n_layers`` affine coupling
layers with alternating even/odd coordinate masks. Layer ``l`` keeps the coordinates of parity
``l % 2`` (the *conditioner input* ``x_A``) and transforms the others,

    x_B <- x_B * exp(s(x_A)) + t(x_A),     s = tanh(MLP_s(n(x_A))),  t = MLP_t(n(x_A)),

with separate scale and shift MLPs (``depth`` hidden ReLU layers of ``width`` units), the scale
bounded by tanh (log-scale in (-1, 1)), and ``n`` an input normalisation (see below). The base is
``N(0, I_d)``. ``log q(x) = log N(z; 0, I) - sum_l sum s_l``.

Input normalisation ``n`` (the paper applies batch norm to the masked conditioner input):

* ``"beta"`` (default): ``n(x_A) = sqrt(beta) x_A``. The tempered target ``pi^beta`` is, in every
  direction orthogonal to mu*, exactly ``N(0, I/beta)``, so this is the normalisation that batch
  norm converges to once the flow fits the tempered target -- but it is deterministic: ``q`` is a
  proper per-sample density at every beta, inverse and log-det are exact, and there is no
  mutable state to thread through ``vmap``/``scan``. At beta = 1 it is the identity, so the
  final flow is a plain RealNVP.
* ``"batch"``: the paper's choice in its pure form: each conditioner input feature is
  standardised with the mean and variance of the *current batch* (no running averages; samples
  are always drawn in batches). Forward and inverse agree batch-wise, but ``q(x)`` of a point
  depends on the rest of its batch. Used to check that the choice does not change conclusions.
* ``"none"``: no normalisation.

(A LayerNorm is not offered: it standardises each sample over its own features, which throws
away the norm and the mean of ``x_A`` -- exactly the radial information a flow needs to fit
Gaussians of a changing width.)

Training (:func:`train_seeds`) minimises ``L_hat = mean_b[beta U(x_b) + log q(x_b)]`` with Adam,
beta from a :class:`~annealvi_lib.models.schedules.Schedule`, as one jit-compiled ``lax.scan`` over
steps, ``vmap``-ped over seeds. Parameters are a pure pytree (``nnx.split``) so that the whole
initialisation + training is a pure function of the key.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .._validate import (check_beta, check_choice, check_int_at_least, check_positive)
from .schedules import SCHEDULES, Schedule
from .targets import Target, log_partition, log_prob, make_target

__all__ = [
    "NORMS",
    "INITS",
    "MAX_LAYER_LOG_SCALE",
    "CAPACITY_MARGIN",
    "FlowSpec",
    "FlowCapacity",
    "flow_capacity",
    "tempered_log_scale",
    "capacity_table",
    "flow_macs",
    "MLP",
    "Coupling",
    "RealNVP",
    "spec_from_config",
    "graphdef",
    "init_params",
    "forward",
    "inverse",
    "log_q",
    "sample",
    "Trajectory",
    "FinalStats",
    "train_seeds",
    "train",
    "grid_target",
    "REALNVP_RUN_FIELDS",
    "run_realnvp_cell",
    "cell_block_width",
]

NORMS = ("beta", "batch", "none")
#: weight initialisations (FlowSpec.init): "small_output" starts the flow near the identity (the
#: last layer of each conditioner MLP has weights of std out_init_scale/sqrt(fan_in), every bias
#: 0, Flax's LeCun-normal hidden layers); "torch" is PyTorch's nn.Linear default that the
#: official code inherits (weights and biases uniform in +-1/sqrt(fan_in), every layer)
INITS = ("small_output", "torch")
#: largest |log-scale| of one coupling layer (the tanh bound)
MAX_LAYER_LOG_SCALE = 1.0
_LOG_2PI = math.log(2.0 * math.pi)
_BN_EPS = 1e-5


@dataclass(frozen=True)
class FlowSpec:
    """Architecture of the flow (validated, hashable: a jit-static argument).

    Attributes:
      d: dimension (>= 2).
      n_layers: number of affine coupling layers (>= 1), masks alternate even/odd.
      width: hidden units of each conditioner MLP (>= 1).
      depth: hidden ReLU layers of each conditioner MLP (>= 1).
      norm: conditioner input normalisation, one of :data:`NORMS`.
      out_init_scale: std multiplier of the last MLP layer's initial weights (>= 0); small
        values start the flow near the identity, i.e. q near N(0, I) ("standard init").
        Used by ``init="small_output"`` only.
      init: weight initialisation, one of :data:`INITS`.
    """

    d: int = 128
    n_layers: int = 8
    width: int = 512
    depth: int = 3
    norm: str = "beta"
    out_init_scale: float = 0.1
    init: str = "small_output"

    def __post_init__(self):
        object.__setattr__(self, "d", check_int_at_least("d", self.d, 2))
        object.__setattr__(self, "n_layers", check_int_at_least("n_layers", self.n_layers, 1))
        object.__setattr__(self, "width", check_int_at_least("width", self.width, 1))
        object.__setattr__(self, "depth", check_int_at_least("depth", self.depth, 1))
        check_choice("norm", self.norm, NORMS)
        if not (math.isfinite(float(self.out_init_scale)) and self.out_init_scale >= 0):
            raise ValueError(f"out_init_scale must be a finite number >= 0, got {self.out_init_scale!r}")
        object.__setattr__(self, "out_init_scale", float(self.out_init_scale))
        check_choice("init", self.init, INITS)


def spec_from_config(cfg) -> FlowSpec:
    """The :class:`FlowSpec` of a :class:`~annealvi_lib.config.RealNVPGridConfig`."""
    return FlowSpec(d=cfg.d, n_layers=cfg.n_layers, width=cfg.width, depth=cfg.depth,
                    norm=getattr(cfg, "norm", "beta"),
                    out_init_scale=getattr(cfg, "out_init_scale", 0.1),
                    init=getattr(cfg, "init", "small_output"))


# ------------------------------------------------------------------------ what a flow can do

class FlowCapacity(NamedTuple):
    """Bounds on what a flow of a given architecture can represent.

    Attributes:
      moves: number of coupling layers that rescale each coordinate, shape (d,).
      max_log_scale: the volume bound per coordinate, ``min_j moves_j * MAX_LAYER_LOG_SCALE``
        (nats; equals ``max_log_det / d`` when every coordinate is moved equally often).
      max_log_det: the largest |log det| of the whole flow, ``sum_l |B_l| * MAX_LAYER_LOG_SCALE``
        (a hard bound: the shifts cannot create volume).
    """

    moves: np.ndarray
    max_log_scale: float
    max_log_det: float


def flow_capacity(spec: FlowSpec) -> FlowCapacity:
    """What the tanh-bounded couplings of ``spec`` can rescale (see :class:`FlowCapacity`).

    Layer ``l`` moves the coordinates of parity ``1 - l % 2`` with a log-scale in
    ``(-MAX_LAYER_LOG_SCALE, MAX_LAYER_LOG_SCALE)``, so ``|log det| < sum_l |B_l|`` everywhere:
    a hard bound on how much volume the flow can create, hence on its entropy,
    ``H(q) < H(N(0, I)) + max_log_det``. (The shifts are unbounded, so composed couplings can
    stretch a single direction further; only the volume is bounded.) ``max_log_scale`` is the
    same bound per coordinate on average when every coordinate is moved equally often.
    """
    idx = np.arange(spec.d)
    moves = np.array([sum(1 for l in range(spec.n_layers) if j % 2 != l % 2) for j in idx])
    return FlowCapacity(moves=moves, max_log_scale=float(moves.min() * MAX_LAYER_LOG_SCALE),
                        max_log_det=float(moves.sum() * MAX_LAYER_LOG_SCALE))


def tempered_log_scale(beta) -> np.ndarray:
    """The log-scale per coordinate that the tempered target needs from a flow with base
    ``N(0, I)``: orthogonally to mu*, ``pi^beta`` is exactly ``N(0, I / beta)``, whose entropy
    exceeds the base's by ``(1/2) ln(1/beta)`` nats per coordinate; any map onto it has a mean
    log-det of ``d`` times this (the mode structure along mu* adds a little more)."""
    return 0.5 * np.log(1.0 / np.asarray(beta, float))


#: headroom (nats) the capacity check asks for above the need: the tanh saturates, so a
#: log-scale close to its bound needs large pre-activations
CAPACITY_MARGIN = 1.0


def capacity_table(spec: FlowSpec, betas, margin: float = CAPACITY_MARGIN) -> list[dict]:
    """One row per ``beta``: what the tempered target needs and what ``spec`` can represent.

    Returns dicts with ``beta_i``, ``need_log_scale`` (per coordinate), ``max_log_scale``,
    ``need_log_det``, ``max_log_det``, ``margin`` (``max_log_scale - need_log_scale``) and
    ``ok`` (margin >= ``margin``)."""
    cap = flow_capacity(spec)
    rows = []
    for b in betas:
        need = float(tempered_log_scale(b))
        rows.append({"beta_i": float(b), "need_log_scale": need,
                     "max_log_scale": cap.max_log_scale, "need_log_det": spec.d * need,
                     "max_log_det": cap.max_log_det, "margin": cap.max_log_scale - need,
                     "ok": bool(cap.max_log_scale - need >= margin)})
    return rows


def flow_macs(spec: FlowSpec) -> int:
    """Multiply-accumulates per sample of one forward pass: every dense layer of the two
    conditioner MLPs of every coupling layer (``fan_in * fan_out`` each). A training step costs
    about three forward passes per sample (forward, and the backward pass's two products)."""
    total = 0
    for l in range(spec.n_layers):
        n_keep = sum(1 for j in range(spec.d) if j % 2 == l % 2)
        dims = [n_keep] + [spec.width] * spec.depth + [spec.d - n_keep]
        total += 2 * sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return total


# ----------------------------------------------------------------------------------- modules

class MLP(nnx.Module):
    """``depth`` hidden ReLU layers of ``width`` units, then a linear output layer."""

    def __init__(self, d_in: int, d_out: int, width: int, depth: int, out_init_scale: float,
                 *, rngs: nnx.Rngs, init: str = "small_output"):
        dims = [d_in] + [width] * depth
        if init == "torch":
            # torch.nn.Linear's default: kaiming_uniform(a=sqrt(5)) for the weights, i.e.
            # U(+-1/sqrt(fan_in)), and U(+-1/sqrt(fan_in)) for the biases
            def lin(a, b):
                bound = 1.0 / math.sqrt(a)
                return nnx.Linear(a, b, rngs=rngs,
                                  kernel_init=nnx.initializers.variance_scaling(
                                      1.0 / 3.0, "fan_in", "uniform"),
                                  bias_init=lambda k, shape, dtype=jnp.float32: jax.random.uniform(
                                      k, shape, dtype, -bound, bound))
            self.hidden = nnx.List([lin(a, b) for a, b in zip(dims[:-1], dims[1:])])
            self.out = lin(width, d_out)
            return
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        out_init = nnx.initializers.variance_scaling(out_init_scale**2, "fan_in", "normal")
        self.out = nnx.Linear(width, d_out, kernel_init=out_init, rngs=rngs)

    def __call__(self, h):
        for lin in self.hidden:
            h = jax.nn.relu(lin(h))
        return self.out(h)


def _normalise(xa, beta, norm: str):
    """Conditioner input normalisation (see module docstring). ``xa`` shape (..., d_A)."""
    if norm == "beta":
        return xa * jnp.sqrt(beta)
    if norm == "batch":
        axes = tuple(range(xa.ndim - 1))
        mean = jnp.mean(xa, axis=axes, keepdims=True)
        var = jnp.var(xa, axis=axes, keepdims=True)
        return (xa - mean) * jax.lax.rsqrt(var + _BN_EPS)
    return xa


class Coupling(nnx.Module):
    """One affine coupling layer; keeps coordinates of parity ``parity``, transforms the rest."""

    def __init__(self, d: int, parity: int, width: int, depth: int, norm: str,
                 out_init_scale: float, *, rngs: nnx.Rngs, init: str = "small_output"):
        idx = np.arange(d)
        # tuples (hashable, static in the graphdef), not arrays
        self.keep = tuple(int(i) for i in idx[idx % 2 == parity])
        self.move = tuple(int(i) for i in idx[idx % 2 != parity])
        self.norm = norm
        self.scale_net = MLP(len(self.keep), len(self.move), width, depth, out_init_scale,
                             rngs=rngs, init=init)
        self.shift_net = MLP(len(self.keep), len(self.move), width, depth, out_init_scale,
                             rngs=rngs, init=init)

    def _st(self, xa, beta):
        h = _normalise(xa, beta, self.norm)
        return jnp.tanh(self.scale_net(h)), self.shift_net(h)

    def __call__(self, z, beta=1.0):
        """Forward: returns ``(x, log|det dx/dz|)`` with shapes (..., d) and (...)."""
        keep, move = np.asarray(self.keep), np.asarray(self.move)
        s, t = self._st(z[..., keep], beta)
        xb = z[..., move] * jnp.exp(s) + t
        return z.at[..., move].set(xb), jnp.sum(s, axis=-1)

    def inverse(self, x, beta=1.0):
        """Inverse: returns ``(z, log|det dz/dx|)``."""
        keep, move = np.asarray(self.keep), np.asarray(self.move)
        s, t = self._st(x[..., keep], beta)
        zb = (x[..., move] - t) * jnp.exp(-s)
        return x.at[..., move].set(zb), -jnp.sum(s, axis=-1)


class RealNVP(nnx.Module):
    """RealNVP flow with a standard normal base; layer ``l`` keeps parity ``l % 2``."""

    def __init__(self, spec: FlowSpec, *, rngs: nnx.Rngs):
        self.layers = nnx.List([
            Coupling(spec.d, l % 2, spec.width, spec.depth, spec.norm, spec.out_init_scale,
                     rngs=rngs, init=spec.init)
            for l in range(spec.n_layers)])

    def __call__(self, z, beta=1.0):
        """``(x, log|det dx/dz|)`` for noise ``z`` of shape (..., d)."""
        logdet = jnp.zeros(z.shape[:-1], z.dtype)
        for layer in self.layers:
            z, ld = layer(z, beta)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, x, beta=1.0):
        """``(z, log|det dz/dx|)`` for points ``x`` of shape (..., d)."""
        logdet = jnp.zeros(x.shape[:-1], x.dtype)
        for layer in reversed(self.layers):
            x, ld = layer.inverse(x, beta)
            logdet = logdet + ld
        return x, logdet


# ------------------------------------------------------------------- pure-pytree interface

@functools.lru_cache(maxsize=64)
def graphdef(spec: FlowSpec):
    """The (static) nnx graph definition of a flow with architecture ``spec``."""
    abstract = nnx.eval_shape(lambda: RealNVP(spec, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def init_params(key: jax.Array, spec: FlowSpec):
    """Random parameters (a pure ``nnx.State`` pytree) of a flow; jit/vmap-able over ``key``."""
    return nnx.split(RealNVP(spec, rngs=nnx.Rngs(params=key)))[1]


def _model(spec: FlowSpec, params) -> RealNVP:
    return nnx.merge(graphdef(spec), params)


def forward(spec: FlowSpec, params, z, beta=1.0):
    """Push noise through the flow: ``(x, log|det dx/dz|)``; z shape (..., d)."""
    return _model(spec, params)(z, beta)


def inverse(spec: FlowSpec, params, x, beta=1.0):
    """Invert the flow: ``(z, log|det dz/dx|)``; x shape (..., d)."""
    return _model(spec, params).inverse(x, beta)


def _log_normal(z):
    return -0.5 * jnp.sum(z * z, axis=-1) - 0.5 * z.shape[-1] * _LOG_2PI


def log_q(spec: FlowSpec, params, x, beta=1.0):
    """Flow log-density ``log q(x)`` via the inverse; shape (...) for x of shape (..., d)."""
    z, ld = inverse(spec, params, x, beta)
    return _log_normal(z) + ld


def sample(spec: FlowSpec, params, key: jax.Array, n: int, beta=1.0):
    """``n`` flow samples and their log-densities: ``(x (n, d), log q(x) (n,))``."""
    z = jax.random.normal(key, (n, spec.d))
    x, ld = forward(spec, params, z, beta)
    return x, _log_normal(z) - ld


# ------------------------------------------------------------------------------- training

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


# ---------------------------------------------------------------------------- grid cells

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
