"""Parameter checks shared by the toy environments.

Parameters arrive from ``EnvironmentConfig(env_kwargs=...)``, often typed by a
user in a config file, so every check names the parameter and the bad value.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= 1."""
    return int_at_least(name, value, 1)


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    number = finite_float(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def finite_float(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise if it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def float_range(name: str, value: Any, *, minimum: float = -math.inf, strict: bool = False) -> tuple[float, float]:
    """Return ``value`` as ``(low, high)`` with ``minimum <= low <= high``
    (``minimum < low`` when ``strict``), or raise naming ``name``."""
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}") from None
    low, high = finite_float(name, low), finite_float(name, high)
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {value!r}")
    if low < minimum or (strict and low == minimum):
        bound = ">" if strict else ">="
        raise ValueError(f"{name} values must be {bound} {minimum:g}, got {value!r}")
    return low, high
