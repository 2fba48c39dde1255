"""The one exception type for mistakes the user can fix: an argument, a file, an environment
variable. ``lem`` prints its message as one line and exits 2 (``--debug``: the traceback);
anything else is a bug and raises normally. It is a ValueError, so library callers that
already catch bad values keep working."""

from __future__ import annotations


class UserError(ValueError):
    """A bad input, named in the message (the file, URL, argument or variable, and what is wrong)."""


_MESSAGE_CHARS = 200  # of a library's own error message quoted in ours


def quote(e: BaseException) -> str:
    """The first sentence of an underlying error, short enough for a one-line message."""
    first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(e).__name__}: {first[:_MESSAGE_CHARS]}"
