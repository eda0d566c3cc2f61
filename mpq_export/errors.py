"""The single exception type for problems the user can fix.

The CLI prints `error: <message>` for it, with no traceback, and exits non-zero. Anything
else that escapes is a bug and keeps its traceback. Messages name the problem and the fix.
"""


class MPQError(Exception):
    """A user-facing error: bad input, an impossible request, a missing optional dependency."""
