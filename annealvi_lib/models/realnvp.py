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

Parameters are a pure pytree (``nnx.split``) so that initialisation and training
(:mod:`annealvi_lib.models.realnvp_training`) are a pure function of the key.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .._validate import check_choice, check_int_at_least

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
