"""The two-mode Gaussian target ``pi(x) = w* N(Rmu*, I) + (1-w*) N(-Rmu*, I)`` and its tempering.

The target is a :class:`Target` NamedTuple (a JAX pytree), built and validated by
:func:`make_target`. All densities are evaluated in log space and broadcast over leading
batch axes of ``x``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import check_int_at_least, check_open_unit, check_positive

__all__ = [
    "Target",
    "make_target",
    "log_prob",
    "potential",
    "tempered_log_prob",
    "sample",
    "log_partition",
]

_LOG_2PI = math.log(2.0 * math.pi)


class Target(NamedTuple):
    """Two-mode Gaussian target (pytree).

    Attributes:
      mu_star: unit vector, shape (d,), the direction of the heavy mode.
      R: distance of each mode from the origin (> 0).
      w_star: weight of the mode at ``+R mu_star``, in (0, 1).
    """

    mu_star: jax.Array
    R: float
    w_star: float

    @property
    def d(self) -> int:
        return int(self.mu_star.shape[-1])


def make_target(d: int = 512, R: float = 3.0, w_star: float = 0.8, *, mu_star=None,
                key: jax.Array | None = None) -> Target:
    """Build a validated :class:`Target`.

    Args:
      d: dimension (integer >= 2).
      R: mode distance from the origin (> 0).
      w_star: weight of the mode at ``+R mu_star`` (in (0, 1)).
      mu_star: optional direction, shape (d,); normalised to unit length. Default ``e_1``,
        or a uniformly random unit vector when ``key`` is given.
      key: PRNG key for a random ``mu_star`` (the RealNVP study's protocol).
    """
    d = check_int_at_least("d", d, 2)
    R = check_positive("R", R)
    w_star = check_open_unit("w_star", w_star)
    if mu_star is None:
        if key is None:
            mu_star = jnp.zeros(d).at[0].set(1.0)
        else:
            mu_star = jax.random.normal(key, (d,))
    mu_star = jnp.asarray(mu_star, dtype=jnp.float32)
    if mu_star.shape != (d,):
        raise ValueError(f"mu_star must have shape ({d},), got {mu_star.shape}")
    norm = float(jnp.linalg.norm(mu_star))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("mu_star must be a finite non-zero vector")
    return Target(mu_star=mu_star / norm, R=R, w_star=w_star)


def _log_mode_mixture(proj, R, w_star):
    """``log[w* e^{R proj} + (1-w*) e^{-R proj}]``: the part of log pi that depends on x only
    through ``proj = <mu*, x>``."""
    return jnp.logaddexp(jnp.log(w_star) + R * proj, jnp.log1p(-w_star) - R * proj)


def log_prob(target: Target, x):
    """Normalised log-density ``log pi(x)``.

    Args:
      target: the :class:`Target`.
      x: points, shape (..., d).
    Returns:
      shape (...).
    """
    d = x.shape[-1]
    proj = x @ target.mu_star
    sq = jnp.sum(x * x, axis=-1)
    return (-0.5 * d * _LOG_2PI - 0.5 * sq - 0.5 * target.R**2
            + _log_mode_mixture(proj, target.R, target.w_star))


def potential(target: Target, x):
    """Potential ``U(x) = -log pi(x)``; shape (...) for x of shape (..., d)."""
    return -log_prob(target, x)


def tempered_log_prob(target: Target, x, beta):
    """Unnormalised tempered log-density ``beta * log pi(x)`` (normaliser: :func:`log_partition`)."""
    return beta * log_prob(target, x)


def sample(target: Target, key: jax.Array, n: int):
    """Draw ``n`` exact samples from the target; returns shape (n, d)."""
    k_mode, k_noise = jax.random.split(key)
    sign = jnp.where(jax.random.uniform(k_mode, (n,)) < target.w_star, 1.0, -1.0)
    noise = jax.random.normal(k_noise, (n, target.d))
    return sign[:, None] * target.R * target.mu_star + noise


def log_partition(target: Target, beta, n_points: int = 4001):
    """Log normaliser ``log Z_beta = log int pi(x)^beta dx`` of the tempered target.

    Exact decomposition: along ``mu*`` the target is the 1-D mixture ``p1(y)``; orthogonally it is
    ``N(0, I_{d-1})``, whose tempered integral is closed-form:
    ``int N(x;0,I)^beta dx = (2 pi)^{(1-beta)(d-1)/2} beta^{-(d-1)/2}``.
    The 1-D part is a trapezoid rule on a beta-adapted grid (``n_points`` nodes on
    ``|y| <= R + 14/sqrt(beta)``).

    Args:
      target: the :class:`Target` (only d, R, w_star are used).
      beta: inverse temperature(s) in (0, 1], any shape; traceable.
    Returns:
      log Z_beta with the shape of ``beta`` (0 at beta = 1).
    """
    beta = jnp.asarray(beta, dtype=jnp.float32)
    R, w = target.R, target.w_star
    d = target.d
    half = R + 14.0 / jnp.sqrt(beta)                      # (...)
    u = jnp.linspace(-1.0, 1.0, n_points)                 # (n,)
    y = u * half[..., None]                                # (..., n)
    log_p1 = (-0.5 * _LOG_2PI - 0.5 * (y * y + R * R) + _log_mode_mixture(y, R, w))
    h = 2.0 * half / (n_points - 1)
    log_wts = jnp.log(jnp.ones(n_points).at[0].set(0.5).at[-1].set(0.5))
    log_1d = jax.nn.logsumexp(beta[..., None] * log_p1 + log_wts, axis=-1) + jnp.log(h)
    log_perp = 0.5 * (d - 1) * ((1.0 - beta) * _LOG_2PI - jnp.log(beta))
    return log_perp + log_1d
