"""One way to check an argument, one message pattern: ``Owner.name must be <what>, got <value>``.

Every option group, measure and public function checks its values with these, so an error always
names the owner, the argument, what it must be and what it got.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

__all__ = ["fail", "is_int", "is_number", "check_int", "check_fraction", "check_number", "check_choice", "check_bool",
           "field_int", "field_fraction", "field_number", "field_choice", "field_bool", "set_field"]


def _owner(obj: Any) -> str:
    return obj if isinstance(obj, str) else type(obj).__name__


def fail(obj: Any, name: str, what: str, value: Any) -> None:
    """Raise ``ValueError("<owner>.<name> must be <what>, got <value>")``; ``obj`` is the owner or its name."""
    raise ValueError(f"{_owner(obj)}.{name} must be {what}, got {value!r}")


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_int(obj: Any, name: str, v: Any, low: int = 1, high: int | None = None, optional: bool = False) -> None:
    if optional and v is None:
        return
    if not is_int(v) or v < low or (high is not None and v > high):
        rng = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        fail(obj, name, rng + (" or None" if optional else ""), v)


def check_fraction(obj: Any, name: str, v: Any, optional: bool = False, closed_low: bool = False) -> None:
    if optional and v is None:
        return
    if not (is_number(v) and (0 <= v if closed_low else 0 < v) and v <= 1):
        fail(obj, name, ("a fraction in [0, 1]" if closed_low else "a fraction in (0, 1]") + (" or None" if optional else ""), v)


def check_number(obj: Any, name: str, v: Any, low: float = 0.0, strict: bool = False, optional: bool = False) -> None:
    if optional and v is None:
        return
    if not is_number(v) or (v <= low if strict else v < low):
        fail(obj, name, f"a finite number {'>' if strict else '>='} {low:g}" + (" or None" if optional else ""), v)


def check_choice(obj: Any, name: str, v: Any, choices: Sequence[Any]) -> None:
    if v not in choices:
        fail(obj, name, f"one of {tuple(choices)}", v)


def check_bool(obj: Any, name: str, v: Any) -> None:
    if not isinstance(v, bool):
        fail(obj, name, "True or False", v)


# -- the same checks reading a frozen dataclass's field by name (in ``__post_init__``) ----------------
def field_int(obj: Any, name: str, low: int = 1, high: int | None = None, optional: bool = False) -> None:
    check_int(obj, name, getattr(obj, name), low, high, optional)


def field_fraction(obj: Any, name: str, optional: bool = False, closed_low: bool = False) -> None:
    check_fraction(obj, name, getattr(obj, name), optional, closed_low)


def field_number(obj: Any, name: str, low: float = 0.0, strict: bool = False, optional: bool = False) -> None:
    check_number(obj, name, getattr(obj, name), low, strict, optional)


def field_choice(obj: Any, name: str, choices: Sequence[Any]) -> None:
    check_choice(obj, name, getattr(obj, name), choices)


def field_bool(obj: Any, name: str) -> None:
    check_bool(obj, name, getattr(obj, name))


def set_field(obj: Any, name: str, value: Any) -> None:
    """Set a frozen dataclass's field while it normalises itself in ``__post_init__``."""
    object.__setattr__(obj, name, value)
