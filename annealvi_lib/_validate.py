"""Parameter validation helpers: every public entry point checks its inputs before computing.

Errors are ``ValueError`` whose message names the parameter and its allowed range, so that a
bad configuration fails loudly and early (DESIGN section 7).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "check_finite",
    "check_open_unit",
    "check_beta",
    "check_positive",
    "check_int_at_least",
    "check_choice",
]


def _as_float(name: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return x


def check_finite(name: str, value: Any) -> float:
    """Return ``value`` as a float, raising if it is not a finite real number."""
    return _as_float(name, value)


def check_open_unit(name: str, value: Any) -> float:
    """Check ``0 < value < 1`` (e.g. the target weight w*)."""
    x = _as_float(name, value)
    if not 0.0 < x < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {value!r}")
    return x


def check_beta(name: str, value: Any) -> float:
    """Check an inverse temperature ``0 < value <= 1``."""
    x = _as_float(name, value)
    if not 0.0 < x <= 1.0:
        raise ValueError(f"{name} must lie in (0, 1], got {value!r}")
    return x


def check_positive(name: str, value: Any) -> float:
    """Check ``value > 0`` (e.g. R, t0, learning rate)."""
    x = _as_float(name, value)
    if not x > 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return x


def check_int_at_least(name: str, value: Any, minimum: int) -> int:
    """Check that ``value`` is an integer ``>= minimum`` (e.g. d >= 2, B >= 1)."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        hasattr(value, "__index__")
    ):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def check_choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value
