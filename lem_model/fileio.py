"""Writing files and directories so that a crash never leaves a half-written one under the real
name: build beside the target, then rename over it.

Temporaries carry the writer's pid (``.NAME.pid1234.xxxx.part``) so that the next write to the
same target can remove those of writers that died (kill -9 runs no cleanup) without touching
those of a writer still at work. Results get the permissions of an ordinary file or directory
under the process umask (the temp file APIs create them 0600/0700), and are fsynced before the
rename and their directory after it, so a power loss cannot leave an empty file under the name.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lem_model.processes import pid_alive

_FILE_MODE = 0o666  # what open() asks for, before the umask
_DIR_MODE = 0o777  # what mkdir() asks for, before the umask
_PID_TAG = "pid"
_PART_SUFFIX = ".part"
_OLD_SUFFIX = ".old"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{_PID_TAG}{os.getpid()}."


def _umask() -> int:
    """The process umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sweep_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporaries beside ``target`` left by writers whose process is gone; return them.

    A writer killed between the two renames of a directory swap left no ``target`` but the old
    complete copy aside (``*.old``): that copy is put back first, so the crash leaves the old
    state, never nothing."""
    target = Path(target)
    prefix = f".{target.name}.{_PID_TAG}"
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except FileNotFoundError:
        return removed

    def dead(entry: Path) -> bool:
        pid = entry.name[len(prefix):].split(".", 1)[0]
        return entry.name.startswith(prefix) and pid.isdigit() and not pid_alive(int(pid))

    stale = [e for e in entries if dead(e)]
    olds = sorted((e for e in stale if e.name.endswith(_OLD_SUFFIX)), key=lambda e: e.stat().st_mtime)
    if olds and not target.exists():
        os.replace(olds[-1], target)
        stale.remove(olds[-1])
    for entry in stale:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(Path(dirpath) / name)
        _fsync_path(Path(dirpath))


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` beside ``path``, then rename over it; the temp file goes on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_PART_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE & ~_umask())
        _fsync_path(Path(tmp))
        os.replace(tmp, path)
        _fsync_path(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """An exclusive flock on ``.NAME.lock`` beside ``target``: concurrent builds of one target
    swap it one at a time (a rename of the old dir racing a rename onto the name fails)."""
    lock = target.with_name(f".{target.name}.lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def replaced_dir(target: Path) -> Iterator[Path]:
    """Yield an empty directory beside ``target``; when the block succeeds it replaces
    ``target`` whole, and when it fails it is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.chmod(tmp, _DIR_MODE & ~_umask())
        _fsync_tree(tmp)
        old = _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _swap_in(built: Path, target: Path) -> Path | None:
    """Rename ``built`` to ``target`` under the target's lock; return where the old one went."""
    old = None
    with _locked(target):
        if target.exists():
            old = built.with_name(built.name + _OLD_SUFFIX)
            os.replace(target, old)
        try:
            os.replace(built, target)
        except BaseException:
            if old is not None:  # put the old one back: never leave the target missing
                os.replace(old, target)
            raise
        _fsync_path(target.parent)
    return old
