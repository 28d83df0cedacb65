"""Parameter validation helpers: every public entry point checks its inputs before computing.

Errors are ``ValueError`` whose message names the parameter and its allowed range, so that a
bad configuration fails loudly and early (DESIGN section 7).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_SEEDS",
    "check_finite",
    "check_open_unit",
    "check_float_range",
    "check_beta",
    "check_positive",
    "check_int_at_least",
    "check_choice",
    "check_int_range",
    "check_bool",
    "check_sequence",
    "check_shard",
    "check_t0",
]

#: Largest master seed (JAX keys take a 64-bit integer; we keep to unsigned 32 bits).
MAX_SEED = 2**32 - 1
#: Largest annealing time / run length in steps: schedules and noise keys of a run are
#: materialised as arrays of this length, so 10^6 steps already take tens of MB per run.
MAX_STEPS = 1_000_000
#: Largest number of replicates per cell.
MAX_SEEDS = 1_000_000


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


def _number(x: float) -> str:
    """``x`` as written in an error message: an integer without exponent (1000000), else ``g``."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def check_float_range(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                      hi_open: bool = False, unit: str = "") -> float:
    """Check a finite ``lo <= value <= hi`` (``lo_open``/``hi_open``: strict), naming the allowed
    interval (and ``unit``, e.g. ``" steps"``) in the error."""
    x = _as_float(name, value)
    if not ((x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)):
        interval = f"{'(' if lo_open else '['}{_number(lo)}, {_number(hi)}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}{unit}, got {value!r}")
    return x


def check_positive(name: str, value: Any) -> float:
    """Check ``value > 0`` (e.g. R, t0, learning rate)."""
    x = _as_float(name, value)
    if not x > 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return x


def _as_int(name: str, value: Any, what: str) -> int:
    """``value`` as a Python int: ints and integer-valued finite floats; never bools or
    strings (``2.0`` -> 2, ``1.5`` and ``"2"`` raise)."""
    if isinstance(value, bool) or isinstance(value, str):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if hasattr(value, "__index__"):
        return int(value.__index__())
    if isinstance(value, float) or hasattr(value, "is_integer"):
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {what}, got {value!r}") from None
        if math.isfinite(x) and x.is_integer():
            return int(x)
    raise ValueError(f"{name} must be {what}, got {value!r}")


def check_int_at_least(name: str, value: Any, minimum: int) -> int:
    """Check that ``value`` is an integer ``>= minimum`` (e.g. d >= 2, B >= 1); returns an int."""
    v = _as_int(name, value, f"an integer >= {minimum}")
    if v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return v


def check_int_range(name: str, value: Any, minimum: int, maximum: int) -> int:
    """Check that ``value`` is an integer in ``[minimum, maximum]``; returns an int."""
    what = f"an integer in [{minimum}, {maximum}]"
    v = _as_int(name, value, what)
    if not minimum <= v <= maximum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


def check_bool(name: str, value: Any) -> bool:
    """Check that ``value`` is a bool (``True``/``False``; not ``"no"`` or 0)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_sequence(name: str, values: Any, check=None, *, min_len: int = 1) -> tuple:
    """A non-string sequence of at least ``min_len`` items as a tuple, each passed through
    ``check(name, item)`` when given (so items are validated and normalised)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a sequence (tuple or list) of values, got {values!r}")
    items = tuple(values)
    if len(items) < min_len:
        raise ValueError(f"{name} must hold at least {min_len} value(s), got {values!r}")
    return tuple(check(name, v) for v in items) if check is not None else items


def check_shard(shard: Any) -> tuple[int, int] | None:
    """``None`` or a pair ``(k, n)`` of integers with ``0 <= k < n``."""
    if shard is None:
        return None
    msg = f"shard must be a pair (k, n) of integers with 0 <= k < n, got {shard!r}"
    try:
        k, n = shard
        k, n = _as_int("shard", k, "an integer"), _as_int("shard", n, "an integer")
    except (TypeError, ValueError):
        raise ValueError(msg) from None
    if n < 1 or not 0 <= k < n:
        raise ValueError(msg)
    return k, n


def check_choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_t0(name: str, value: Any) -> float:
    """An annealing time in steps: ``0 < value <= MAX_STEPS``."""
    t = check_positive(name, value)
    if t > MAX_STEPS:
        raise ValueError(f"{name} must be in (0, {MAX_STEPS}] steps, got {value!r}")
    return t
