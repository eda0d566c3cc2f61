"""The single exception type for problems the user can fix.

The CLI prints `error: <message>` for it, with no traceback, and exits non-zero. Anything
else that escapes is a bug and keeps its traceback. Messages name the problem and the fix.
"""

import math
import numbers


class MPQError(Exception):
    """A user-facing error: bad input, an impossible request, a missing optional dependency."""


def require_int(value, flag: str, minimum: int) -> None:
    """Settings' integer options: an integer (numpy's too; not a bool) of at least `minimum`, else the
    one-line error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise MPQError(f"{flag} must be {what}, got {value!r}")


def require_number(value, flag: str) -> float:
    """A real number (numpy's too; not a bool nor a string) that is finite, as a float; else the one-line error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise MPQError(f"{flag} must be a finite number, got {value!r}")
    return float(value)


def require_path(value, what: str) -> str:
    """A non-empty path (str or os.PathLike, e.g. pathlib.Path) as a str; else the one-line error."""
    import os

    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise MPQError(f"{what} must be a path (a non-empty string or pathlib.Path), got {value!r}")
    return value


def comma_list(value) -> tuple:
    """A comma list given as one string ("a,b") or as a sequence, as a tuple of its non-empty items: the one
    way every list option (--budget, --bits, --formats, --emit) is split, from the CLI or from Python."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, bytes) or not hasattr(value, "__iter__"):
        return (value,)  # one value given bare; its type is the caller's to check
    return tuple(value)
