"""The one exception type for mistakes the user can fix: an argument, a file, an environment
variable. ``lem`` prints its message as one line and exits 2 (``--debug``: the traceback);
anything else is a bug and raises normally. It is a ValueError, so library callers that
already catch bad values keep working."""

from __future__ import annotations


class UserError(ValueError):
    """A bad input, named in the message (the file, URL, argument or variable, and what is wrong)."""
