"""What every layer shares and that needs no torch: one set of argument checks, atomic writes and
the optional-dependency check. Imports nothing of the package."""

from ._atomic import write_bytes, write_json, write_npy_chunked, write_npz
from ._checks import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_number,
    fail,
    field_bool,
    field_choice,
    field_fraction,
    field_int,
    field_number,
    is_int,
    is_number,
    set_field,
)
from ._optional import require

__all__ = [
    "write_bytes", "write_json", "write_npz", "write_npy_chunked",
    "fail", "is_int", "is_number", "check_int", "check_fraction", "check_number", "check_choice", "check_bool",
    "field_int", "field_fraction", "field_number", "field_choice", "field_bool", "set_field",
    "require",
]
