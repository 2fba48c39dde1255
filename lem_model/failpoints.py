"""Named crash points for the crash-recovery tests: ``LEM_FAILPOINT=<name>`` makes the process
kill itself with SIGKILL the first time it reaches ``failpoint(<name>)`` (``<name>:<n>``: the
n-th time). Nothing is cleaned up, exactly as when the machine dies there, so a test can check
that the next run recovers. Unset (always, outside those tests) it costs one dict lookup.

The points: ``ingest`` (a partition's data is read, not yet written), ``windows`` (the windows
directory is half built), ``epoch`` (a training epoch's state is saved), ``evaluation`` (the
evaluation directory is half written).
"""

from __future__ import annotations

import os
import signal

ENV = "LEM_FAILPOINT"
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
