"""The run folder's lock on both branches: fcntl (POSIX, for real, across processes) and msvcrt
(Windows, through a fake msvcrt that locks byte ranges as Windows does)."""

from __future__ import annotations

import errno
import subprocess
import sys
import types

import pytest

from chimuf.core import engine
from chimuf.core.errors import StageError


def hold_in_child(folder) -> subprocess.Popen[str]:
    """A second process that holds the folder's lock until its stdin closes."""
    code = ("import sys; from pathlib import Path; from chimuf.core.engine import hold_lock; "
            "hold_lock(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.mark.skipif(engine.WINDOWS, reason="the fcntl branch")
def test_fcntl_lock_refuses_a_second_process_naming_the_holder_and_frees_when_it_ends(tmp_path):
    child = hold_in_child(tmp_path)
    try:
        with pytest.raises(StageError, match=rf"in use by process {child.pid} on host"):
            engine.hold_lock(tmp_path)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    fd = engine.hold_lock(tmp_path)  # the kernel dropped the ended holder's lock
    engine.release_lock(fd)


@pytest.mark.skipif(engine.WINDOWS, reason="the fcntl branch")
def test_fcntl_lock_released_can_be_taken_again_in_the_same_process(tmp_path):
    engine.release_lock(engine.hold_lock(tmp_path))
    engine.release_lock(engine.hold_lock(tmp_path))


class FakeMsvcrt(types.ModuleType):
    """msvcrt.locking as Windows does it: `nbytes` bytes from the descriptor's current position,
    exclusive between descriptors (there: processes), EACCES when held, unlock by the holder only."""

    LK_UNLCK, LK_LOCK, LK_NBLCK, LK_RLCK, LK_NBRLCK = 0, 1, 2, 3, 4

    def __init__(self) -> None:
        super().__init__("msvcrt")
        self.held: dict[tuple[int, int], int] = {}  # (inode, offset) → holding descriptor
        self.calls: list[tuple[int, int]] = []  # (mode, offset)

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        import os

        assert nbytes == 1
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        key = (os.fstat(fd).st_ino, offset)
        self.calls.append((mode, offset))
        if mode == self.LK_UNLCK:
            if self.held.get(key) != fd:
                raise OSError(errno.EACCES, "Permission denied")
            del self.held[key]
        elif key in self.held:
            raise OSError(errno.EACCES, "Permission denied")
        else:
            self.held[key] = fd


@pytest.fixture
def windows(monkeypatch) -> FakeMsvcrt:
    fake = FakeMsvcrt()
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setattr(engine, "WINDOWS", True)
    return fake


def test_msvcrt_lock_refuses_a_second_holder_and_names_the_first(tmp_path, windows):
    first = engine.hold_lock(tmp_path)
    with pytest.raises(StageError, match=r"in use by process \d+ on host .*choose another folder"):
        engine.hold_lock(tmp_path)
    assert (windows.LK_NBLCK, engine.WINDOWS_LOCK_OFFSET) in windows.calls  # never waits
    engine.release_lock(first)
    assert (windows.LK_UNLCK, engine.WINDOWS_LOCK_OFFSET) in windows.calls
    engine.release_lock(engine.hold_lock(tmp_path))  # free again once released
    assert not windows.held


def test_msvcrt_lock_leaves_the_holders_note_readable(tmp_path, windows):
    fd = engine.hold_lock(tmp_path)
    try:
        note = (tmp_path / engine.LOCK_FILE).read_text()
        assert note.startswith("process ") and len(note) < engine.WINDOWS_LOCK_OFFSET
    finally:
        engine.release_lock(fd)


def test_msvcrt_errors_other_than_held_are_raised(tmp_path, windows, monkeypatch):
    def broken(fd, mode, nbytes):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(windows, "locking", broken)
    with pytest.raises(OSError, match="Bad file descriptor"):
        engine.hold_lock(tmp_path)


def test_atomic_writes_work_without_fchmod(tmp_path, monkeypatch):
    """Windows before Python 3.13 has no os.fchmod."""
    import os

    from chimuf.core.files import atomic_write_text

    monkeypatch.delattr(os, "fchmod")
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_the_study_path_imports_no_posix_only_module():
    """fcntl is imported where the POSIX lock is taken, never at the top of a module."""
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name in ('fcntl', 'termios', 'pwd', 'grp', 'resource'): raise ImportError(name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "import chimuf.cli, chimuf.study, chimuf.core.engine, chimuf.core.files, chimuf.report.render")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_report_tool_past_its_time_is_killed_without_process_groups(monkeypatch):
    """Windows has no os.killpg: the tool itself is killed."""
    import os

    from chimuf.report.render import kill_group

    monkeypatch.delattr(os, "killpg")
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_group(process)
    assert process.returncode is not None and process.returncode != 0
