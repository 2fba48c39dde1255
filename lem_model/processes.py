"""Whether the process that started something is still alive: how a crashed writer's
temporaries (lem_model.fileio) and a killed run (lem_pipeline.run_health) are told apart from
ones still at work.

A pid alone is not an identity: after a reboot (the power cut a crash check exists for) or a
long uptime, another process may hold it. Where a start time was recorded beside the pid, the
process holding the pid must have started then.
"""

from __future__ import annotations

import os
from pathlib import Path

_SAME_START_S = 1.0  # /proc start times have clock-tick resolution; allow for rounding


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host. A zombie is dead: it only awaits reaping."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal check is all there is
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def started_at(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), or None where /proc cannot say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks


def process_alive(pid: int, *, started: float | None = None, started_before: float | None = None) -> bool:
    """``pid`` alive and, where known, the same process: started at ``started``, or no later
    than ``started_before`` (a run's worker cannot have started after the run did)."""
    if not pid_alive(pid):
        return False
    began = started_at(pid)
    if began is None:
        return True
    if started is not None and abs(began - started) > _SAME_START_S:
        return False
    return started_before is None or began <= started_before + _SAME_START_S
