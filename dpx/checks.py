"""Parameter checks for plugin authors.

Simulator parameters arrive from ``EnvironmentConfig(env_kwargs=...)``, often
typed by a user in a TOML file, so every check raises a ``ValueError`` that
names the parameter and the bad value, and returns the value converted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, or raise if it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int, or raise if it is not an integer >= 1."""
    return int_at_least(name, value, 1)


def number(name: str, value: Any, *, minimum: float = -math.inf, below: float = math.inf, strict: bool = False) -> float:
    """``value`` as a finite float in ``[minimum, below)`` (``(minimum, below)`` when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum) or value >= below:
        low = f"{'>' if strict else '>='} {minimum:g}" if minimum > -math.inf else ""
        high = f"< {below:g}" if below < math.inf else ""
        raise ValueError(f"{name} must be {' and '.join(filter(None, (low, high)))}, got {value!r}")
    return float(value)


def finite_float(name: str, value: Any) -> float:
    """``value`` as a float, or raise if it is not a finite real number."""
    return number(name, value)


def positive_float(name: str, value: Any) -> float:
    """``value`` as a float > 0."""
    return number(name, value, minimum=0.0, strict=True)


def float_range(
    name: str, value: Any, *, minimum: float = -math.inf, maximum: float = math.inf, strict: bool = False
) -> tuple[float, float]:
    """``value`` as ``(low, high)`` with ``minimum <= low <= high <= maximum``
    (``minimum < low`` when ``strict``)."""
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}") from None
    low, high = number(name, low), number(name, high)
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {value!r}")
    if low < minimum or (strict and low == minimum):
        raise ValueError(f"{name} values must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    if high > maximum:
        raise ValueError(f"{name} values must be <= {maximum:g}, got {value!r}")
    return low, high


def triple(name: str, value: Any, check: Callable[[str, Any], Any]) -> tuple[Any, Any, Any]:
    """Three values (x, y, z), each passed through ``check(name, item)``."""
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    if len(items) != 3:
        raise ValueError(f"{name} must be three values (x, y, z), got {value!r}")
    return tuple(check(name, item) for item in items)  # type: ignore[return-value]
