"""Construction-time checks of hyper-parameters (DESIGN §8).

Every error names the field, the value received and what would be accepted, e.g.
``ValueError: EETSAgent.num_members=1 is out of range; expected an integer >= 2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def _where(owner: Any, name: str) -> str:
    prefix = owner if isinstance(owner, str) else type(owner).__name__
    return f"{prefix}.{name}" if prefix else name


def check_int(owner: Any, name: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
    """Raises ``ValueError`` unless ``value`` is an integer in ``[low, high]``."""
    bounds = _bounds_text(low, high, closed=(True, True))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_where(owner, name)}={value!r} is not an integer; expected an integer {bounds}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{_where(owner, name)}={value!r} is out of range; expected an integer {bounds}")


def check_float(
    owner: Any,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raises ``ValueError`` unless ``value`` is a finite real number in the given interval."""
    bounds = _bounds_text(low, high, closed=(low_inclusive, high_inclusive))
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{_where(owner, name)}={value!r} is not a number; expected a finite number {bounds}"
        ) from None
    if not math.isfinite(x):
        raise ValueError(f"{_where(owner, name)}={value!r} is not finite; expected a finite number {bounds}")
    too_low = low is not None and (x < low or (not low_inclusive and x == low))
    too_high = high is not None and (x > high or (not high_inclusive and x == high))
    if too_low or too_high:
        raise ValueError(f"{_where(owner, name)}={value!r} is out of range; expected a number {bounds}")


def check_choice(owner: Any, name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{_where(owner, name)}={value!r} is not allowed; expected one of {choices}")


def _bounds_text(low, high, closed) -> str:
    lo = "" if low is None else f"{'>=' if closed[0] else '>'} {low}"
    hi = "" if high is None else f"{'<=' if closed[1] else '<'} {high}"
    if lo and hi:
        return f"{lo} and {hi}"
    return lo or hi or "(any value)"
