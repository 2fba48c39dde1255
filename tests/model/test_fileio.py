"""lem_model.fileio under the faults of finding 12: writers killed mid-write, concurrent builds of
one target, and the umask. Real processes, real files."""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lem_model.fileio import atomic_write_text, replaced_dir

REPO = Path(__file__).resolve().parents[2]

_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from lem_model.fileio import atomic_write, replaced_dir
target, kind = Path(sys.argv[1]), sys.argv[2]
def die(tmp):
    Path(tmp).write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no finally, no cleanup
if kind == "file":
    atomic_write(target, die)
else:
    with replaced_dir(target) as d:
        die(d / "part")
"""


def _killed_writer(target: Path, kind: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target), kind], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _beside(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_finding_12a_temporaries_of_killed_writers_are_swept_on_the_next_write(tmp_path, kind):
    target = tmp_path / ("table.parquet" if kind == "file" else "windows")
    _killed_writer(target, kind)
    (first,) = _beside(target)
    assert first.startswith(f".{target.name}.pid")
    _killed_writer(target, kind)  # its own write swept the first orphan before it died too
    (second,) = _beside(target)
    assert second != first and second.startswith(f".{target.name}.pid")
    assert not target.exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        in_progress = target.with_name(f".{target.name}.pid{live.pid}.abc123.part")  # a writer still at work
        in_progress.write_text("not yet")
        if kind == "file":
            atomic_write_text(target, "complete")
            assert target.read_text() == "complete"
        else:
            with replaced_dir(target) as d:
                (d / "part").write_text("complete")
            assert (target / "part").read_text() == "complete"
        left = [n for n in _beside(target) if not n.endswith(".lock")]
        assert left == [in_progress.name]  # the dead writers' temporaries are gone, the live one's is kept
    finally:
        live.kill()
        live.wait()


def _build(target: str, builder: int, files: int, barrier, results) -> None:
    try:
        with replaced_dir(Path(target)) as d:
            for j in range(files):
                (d / f"part{j}").write_text(f"{builder}\n")
            barrier.wait(timeout=60)  # every builder swaps at the same moment
        results.put((builder, ""))
    except BaseException as e:  # report, do not lose, the failure
        results.put((builder, repr(e)))


def test_finding_12b_concurrent_builds_of_one_target_all_succeed_and_leave_one_complete_build(tmp_path):
    builders, files = 24, 5
    target = tmp_path / "windows"
    with replaced_dir(target) as d:  # an existing build, replaced concurrently
        (d / "part0").write_text("old\n")
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(builders), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(target), i, files, barrier, results)) for i in range(builders)]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert {b: e for b, e in outcome.items() if e} == {}
    assert sorted(outcome) == list(range(builders))
    contents = {p.name: p.read_text() for p in target.iterdir()}
    assert sorted(contents) == [f"part{j}" for j in range(files)]
    assert len(set(contents.values())) == 1  # one build, whole, not a mix
    assert [n for n in _beside(target) if not n.endswith(".lock")] == []  # no old dir or temp left


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
def test_finding_12c_files_and_dirs_get_the_umask_mode_not_0600(tmp_path, umask):
    previous = os.umask(umask)
    try:
        f = tmp_path / "table.parquet"
        atomic_write_text(f, "x")
        with replaced_dir(tmp_path / "model") as d:
            (d / "weights").write_text("w")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask


_KILLED_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import lem_model.fileio as fileio
real = os.replace
def replace(src, dst):
    real(src, dst)
    if str(src) == sys.argv[1]:  # the old directory is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
fileio.os.replace = replace
with fileio.replaced_dir(Path(sys.argv[1])) as d:
    (d / "part").write_text("new")
"""


def test_finding_12_a_kill_between_the_two_renames_of_a_swap_leaves_the_old_directory(tmp_path):
    target = tmp_path / "windows"
    with replaced_dir(target) as d:
        (d / "part").write_text("old")
    proc = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_RENAMES, str(target)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not target.exists()  # the crash window: the old copy aside, the new build beside it
    from lem_model.fileio import sweep_stale_temporaries

    sweep_stale_temporaries(target)  # what the next write does first
    assert (target / "part").read_text() == "old"
    assert [n for n in _beside(target) if not n.endswith(".lock")] == []


def test_finding_12d_a_file_is_fsynced_before_its_rename_and_the_directory_after(tmp_path, monkeypatch):
    import lem_model.fileio as fileio

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}"),
                                                       real_fsync(fd))[1])
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (events.append(f"replace {Path(b).name}"),
                                                            real_replace(a, b))[1])
    target = tmp_path / "table.parquet"
    atomic_write_text(target, "rows")
    tmp = events[0].split(" ", 1)[1]
    assert Path(tmp).name.startswith(".table.parquet.pid") and events[1:] == ["replace table.parquet",
                                                                              f"fsync {tmp_path}"]
