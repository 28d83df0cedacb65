"""Binomial statistics for collapse frequencies: Wilson score intervals and standard errors."""

from __future__ import annotations

import numpy as np

__all__ = ["wilson_interval", "binomial_se"]


def wilson_interval(k, n, z: float = 1.96):
    """Wilson score interval for a binomial proportion (vectorised).

    Args:
      k: successes (array-like of ints, 0 <= k <= n).
      n: trials (array-like of ints >= 0). Where n == 0 the interval is (0, 1).
      z: normal quantile (1.96 for 95%).
    Returns:
      ``(low, high)`` arrays (floats) broadcast from ``k`` and ``n``.
    """
    k = np.asarray(k, dtype=float)
    n = np.asarray(n, dtype=float)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError(f"k must satisfy 0 <= k <= n, got k={k!r}, n={n!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / np.where(n > 0, n, 1), 0.5)
        denom = 1 + z**2 / np.where(n > 0, n, 1)
        centre = (p + z**2 / (2 * np.where(n > 0, n, 1))) / denom
        half = z * np.sqrt(p * (1 - p) / np.where(n > 0, n, 1)
                           + z**2 / (4 * np.where(n > 0, n, 1) ** 2)) / denom
    low = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    high = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def binomial_se(p, n):
    """Standard error ``sqrt(p (1-p) / n)`` of a binomial proportion (vectorised; inf where n == 0)."""
    p = np.asarray(p, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.sqrt(p * (1 - p) / np.where(n > 0, n, 1)), np.inf)
