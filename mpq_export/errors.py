"""The single exception type for problems the user can fix.

The CLI prints `error: <message>` for it, with no traceback, and exits non-zero. Anything
else that escapes is a bug and keeps its traceback. Messages name the problem and the fix.
"""

import numbers


class MPQError(Exception):
    """A user-facing error: bad input, an impossible request, a missing optional dependency."""


def require_int(value, flag: str, minimum: int) -> None:
    """Settings' integer options: an integer (numpy's too; not a bool) of at least `minimum`, else the
    one-line error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise MPQError(f"{flag} must be {what}, got {value!r}")
