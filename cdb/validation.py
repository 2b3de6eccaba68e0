"""Construction-time checks of hyper-parameters (docs/design.md §9).

Every error names the field, the value received and what would be accepted, e.g.
``ValueError: EETSAgent.num_members=1 is out of range; expected an integer >= 2``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np


def _where(owner: Any, name: str) -> str:
    prefix = owner if isinstance(owner, str) else type(owner).__name__
    return f"{prefix}.{name}" if prefix else name


def check_int(owner: Any, name: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
    """Raises ``ValueError`` unless ``value`` is an integer in ``[low, high]``."""
    bounds = _bounds_text(low, high, closed=(True, True))
    # NumPy integers (e.g. ``np.int64(16)`` from an array or a sweep grid) are integers too
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
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
    """Raises ``ValueError`` unless ``value`` is a real number, finite in float32, in the given interval.

    A number is an ``int``, ``float``, NumPy number or 0-d numeric array, never a string (``'8'``)
    or a bool. The library computes in float32, so a value beyond float32's range (``1e39``) would
    become ``inf`` there: it is rejected as not finite.
    """
    bounds = _bounds_text(low, high, closed=(low_inclusive, high_inclusive))
    if not _is_real_number(value):
        raise ValueError(f"{_where(owner, name)}={value!r} is not a number; expected a finite number {bounds}")
    x = float(value)
    if not math.isfinite(x) or abs(x) > _FLOAT32_MAX:
        raise ValueError(
            f"{_where(owner, name)}={value!r} is not finite in float32; expected a finite number {bounds} "
            f"(|x| <= {_FLOAT32_MAX:.4g})"
        )
    too_low = low is not None and (x < low or (not low_inclusive and x == low))
    too_high = high is not None and (x > high or (not high_inclusive and x == high))
    if too_low or too_high:
        raise ValueError(f"{_where(owner, name)}={value!r} is out of range; expected a number {bounds}")


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _is_real_number(value: Any) -> bool:
    if isinstance(value, bool | np.bool_ | str | bytes):
        return False
    if isinstance(value, numbers.Real):
        return True
    dtype = getattr(value, "dtype", None)
    return getattr(value, "shape", None) == () and dtype is not None and np.dtype(dtype).kind in "iuf"


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
