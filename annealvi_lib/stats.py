"""Binomial statistics for collapse frequencies: Wilson score intervals (re-exported from
:mod:`annealvi_lib.metrics`) and standard errors."""

from __future__ import annotations

import numpy as np

from .metrics import wilson_interval  # the one implementation (validated, vectorised)

__all__ = ["wilson_interval", "binomial_se"]


def binomial_se(p, n):
    """Standard error ``sqrt(p (1-p) / n)`` of a binomial proportion (vectorised; inf where n == 0)."""
    p = np.asarray(p, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.sqrt(p * (1 - p) / np.where(n > 0, n, 1)), np.inf)
