"""Practical guidance: how hot to start and how long to anneal for a target collapse probability.

Based on the closed form of :mod:`annealvi_lib.theory.collapse` for the exponential schedule: the
amplification exponent is ``I = t0 * per_step(beta_i)``, so for a target probability the
shortest annealing time is reached at the ``beta_i`` that maximises ``per_step`` — which is the
``beta_i`` of :func:`~annealvi_lib.theory.collapse.optimal_beta_i` (independent of t0) — and the time
then follows from :func:`~annealvi_lib.theory.collapse.annealing_time_for_probability`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .._validate import check_open_unit
from .collapse import (annealing_time_for_probability, collapse_probability,
                       derived_alpha, optimal_beta_i)
from ..models.schedules import annealing_rate

__all__ = ["Recommendation", "recommend_schedule"]


class Recommendation(NamedTuple):
    """A recommended exponential schedule.

    Attributes:
      beta_i: initial inverse temperature. t0: annealing time in steps (rounded up).
      rate: per-step factor ``beta_i**(-1/t0)``. p_predicted: closed-form collapse probability
      at ``(beta_i, t0)``. p_vanilla: closed-form probability without annealing,
      ``erf(sqrt(d) eps)``. beta_c: critical inverse temperature. status: ``"anneal"`` (the
      schedule reaches the target), ``"not_needed"`` (``p_target >= p_vanilla``: no annealing,
      ``t0 = 0``) or ``"not_reachable"`` (no exponential schedule of the closed form reaches the
      target, e.g. ``beta_c >= 1``: annealing from any start gains nothing; ``t0 = 0`` and
      ``p_predicted = p_vanilla > p_target``).
    """

    beta_i: float
    t0: int
    rate: float
    p_predicted: float
    p_vanilla: float
    beta_c: float
    status: str = "anneal"


def recommend_schedule(p_target: float, *, d: int, R: float, w_star: float, lr: float = 0.05,
                       alpha: float | None = None) -> Recommendation:
    """The fastest exponential schedule whose predicted collapse probability is ``p_target``.

    Args:
      p_target: acceptable collapse probability in (0, 1).
      d: dimension. R: mode distance. w_star: heavy-mode weight. lr: JKO learning rate.
      alpha: ``beta_c R^2`` (default: the value derived from linear stability).
    Returns:
      a :class:`Recommendation`; its ``status`` says whether annealing is needed and whether
      the target can be reached (``t0 = 0`` in both of those cases).
    """
    p_target = check_open_unit("p_target", p_target)
    alpha = derived_alpha(R, w_star) if alpha is None else alpha
    beta_i, _ = optimal_beta_i(1.0, d=d, R=R, w_star=w_star, lr=lr, alpha=alpha)
    t0 = float(annealing_time_for_probability(p_target, beta_i, d=d, R=R, w_star=w_star, lr=lr,
                                              alpha=alpha))
    t0_steps = int(math.ceil(t0)) if math.isfinite(t0) else 0
    p_vanilla = float(collapse_probability(1.0, 1.0, d=d, R=R, w_star=w_star, lr=lr, alpha=alpha))
    if p_target >= p_vanilla:
        return Recommendation(1.0, 0, 1.0, p_vanilla, p_vanilla, alpha / R**2, "not_needed")
    if t0_steps == 0:
        return Recommendation(1.0, 0, 1.0, p_vanilla, p_vanilla, alpha / R**2, "not_reachable")
    p_pred = float(collapse_probability(beta_i, t0_steps, d=d, R=R, w_star=w_star, lr=lr,
                                        alpha=alpha))
    return Recommendation(float(beta_i), t0_steps, float(annealing_rate(beta_i, t0_steps)),
                          p_pred, p_vanilla, alpha / R**2)
