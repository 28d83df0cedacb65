"""Annealing schedules: inverse temperature beta as a plain function of the step t.

Each schedule maps a (possibly traced) step index ``t`` to ``beta(t)`` in (0, 1]; all are
jit- and vmap-friendly. :class:`Schedule` bundles a schedule name with its validated
parameters and is hashable, so it can be a static argument of a jitted function.

Schedules (``beta_i`` initial inverse temperature, ``t0`` annealing time in steps):

* ``exp``                 ``beta(t) = min(1, beta_i ** (1 - t / t0))``  (the paper's)
* ``step``                ``beta_i`` for ``t < t0``, then 1
* ``constant``            1 for all t (no annealing; ``beta_i`` and ``t0`` are ignored)
* ``linear_beta``         beta rises linearly from ``beta_i`` to 1 at ``t0``
* ``linear_temperature``  the temperature ``1/beta`` falls linearly from ``1/beta_i`` to 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax.numpy as jnp
import numpy as np

from .._validate import check_beta, check_choice, check_positive

__all__ = [
    "SCHEDULES",
    "Schedule",
    "exp_schedule",
    "step_schedule",
    "constant_schedule",
    "linear_beta_schedule",
    "linear_temperature_schedule",
    "annealing_rate",
    "make_schedule",
]


def _is_concrete(x) -> bool:
    """True when ``x`` is a plain Python/NumPy value (validation is skipped for tracers)."""
    return isinstance(x, (int, float, np.floating, np.integer))


def _check(beta_i, t0) -> None:
    if _is_concrete(beta_i):
        check_beta("beta_i", beta_i)
    if _is_concrete(t0):
        check_positive("t0", t0)


def exp_schedule(t, *, beta_i, t0):
    """Exponential (geometric) schedule of the paper: ``min(1, beta_i**(1 - t/t0))``.

    Args:
      t: step index, scalar or array (dimensionless).
      beta_i: initial inverse temperature in (0, 1].
      t0: annealing time in steps (> 0); beta reaches 1 at ``t = t0``.
    Returns:
      beta(t), same shape as ``t``.
    """
    _check(beta_i, t0)
    t = jnp.asarray(t, dtype=jnp.float32)
    return jnp.minimum(1.0, jnp.power(beta_i, 1.0 - t / t0))


def step_schedule(t, *, beta_i, t0):
    """Step schedule: ``beta_i`` while ``t < t0``, then 1."""
    _check(beta_i, t0)
    t = jnp.asarray(t, dtype=jnp.float32)
    return jnp.where(t < t0, jnp.asarray(beta_i, jnp.float32), 1.0)


def constant_schedule(t, *, beta_i=1.0, t0=1.0):
    """No annealing: beta = 1 at every step (``beta_i`` and ``t0`` are accepted and ignored)."""
    _check(beta_i, t0)
    return jnp.ones_like(jnp.asarray(t, dtype=jnp.float32))


def linear_beta_schedule(t, *, beta_i, t0):
    """Linear in beta: ``beta_i + (1 - beta_i) t / t0`` until ``t0``, then 1."""
    _check(beta_i, t0)
    t = jnp.asarray(t, dtype=jnp.float32)
    return jnp.minimum(1.0, beta_i + (1.0 - beta_i) * t / t0)


def linear_temperature_schedule(t, *, beta_i, t0):
    """Linear in temperature T = 1/beta: ``T(t) = 1/beta_i + (1 - 1/beta_i) t / t0`` until ``t0``."""
    _check(beta_i, t0)
    t = jnp.asarray(t, dtype=jnp.float32)
    temp_i = 1.0 / beta_i
    temp = jnp.maximum(1.0, temp_i + (1.0 - temp_i) * t / t0)
    return 1.0 / temp


SCHEDULES: dict[str, Callable] = {
    "exp": exp_schedule,
    "step": step_schedule,
    "constant": constant_schedule,
    "linear_beta": linear_beta_schedule,
    "linear_temperature": linear_temperature_schedule,
}


def annealing_rate(beta_i, t0):
    """Per-step factor ``beta_i ** (-1/t0)`` by which the exponential schedule multiplies beta.

    Args:
      beta_i: initial inverse temperature(s) in (0, 1].
      t0: annealing time(s) in steps (> 0).
    Returns:
      the rate (>= 1); NumPy broadcasting over array inputs.
    """
    b = np.asarray(beta_i, dtype=float)
    t = np.asarray(t0, dtype=float)
    if np.any(~np.isfinite(b)) or np.any((b <= 0) | (b > 1)):
        raise ValueError(f"beta_i must lie in (0, 1], got {beta_i!r}")
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"t0 must be > 0, got {t0!r}")
    return b ** (-1.0 / t)


@dataclass(frozen=True)
class Schedule:
    """A named, validated schedule; ``schedule(t)`` returns beta(t). Hashable (jit-static).

    Attributes:
      name: one of :data:`SCHEDULES`.
      beta_i: initial inverse temperature in (0, 1].
      t0: annealing time in steps (> 0).
    """

    name: str = "exp"
    beta_i: float = 1.0
    t0: float = 1.0

    def __post_init__(self):
        check_choice("schedule", self.name, tuple(SCHEDULES))
        object.__setattr__(self, "beta_i", check_beta("beta_i", self.beta_i))
        object.__setattr__(self, "t0", check_positive("t0", self.t0))

    def __call__(self, t):
        return SCHEDULES[self.name](t, beta_i=self.beta_i, t0=self.t0)

    @property
    def rate(self) -> float:
        """Per-step annealing factor ``beta_i ** (-1/t0)`` (meaningful for ``exp``)."""
        return float(annealing_rate(self.beta_i, self.t0))


def make_schedule(name: str = "exp", *, beta_i: float = 1.0, t0: float = 1.0) -> Schedule:
    """Build a validated :class:`Schedule` (raises ``ValueError`` naming a bad field)."""
    return Schedule(name=name, beta_i=beta_i, t0=t0)
