"""Files that are never half written: atomic writes, JSON in and out, and the time stamp.

Every result chimuf keeps (stage outcomes, checkpoints' state, figures, the report) is written
through `atomic_write_bytes`: a reader sees the old file or the new one, never half of one, even
after a crash or a full disk. A whole folder (the published report project) is replaced the same
way, by `replace_dir`. Stages, the model files, the cache, plots and the report all write
this way, so the helpers live here, apart from the stage engine that uses them too.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import datetime as dt
import errno
import io
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from chimuf.core.errors import ChimufError, StageError
from chimuf.core.results import dumps


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half.

    Temp file in the same folder, fsync, os.replace, then fsync of the folder so the rename
    itself survives a crash.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX (Windows has it from Python 3.13, where 0o644 means nothing)
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; results are meant to be shared and read
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, dumps(value) + "\n")


MAX_JSON_BYTES = 256 * 2**20  # a results.json of thousands of trials is a few MB


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> Any | None:
    """The JSON at `path`, or None when there is none. Files are only ever written atomically,
    so a file that does not parse was damaged outside chimuf: that is an error, not a skip.
    A link to a device, a FIFO or a file over `limit` bytes is refused (read_bounded)."""
    try:
        text = read_bounded(path, limit, "JSON file", error=StageError).decode("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError as exc:
        raise StageError(f"`{path}` is damaged (not UTF-8: {exc.reason}); delete it to redo that "
                         "step, then rerun") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise StageError(
            f"`{path}` is damaged ({reason[:200]}); delete it to redo that step, then rerun"
        ) from None


# --- reading files someone else made: regular files only, inside their folder, bounded -----------


def inside(path: Path, root: Path, what: str, error: type[ChimufError] = StageError) -> Path:
    """`path` resolved (links followed), refused unless it lies inside `root`: a run folder from
    someone else may hold links that point anywhere on this machine."""
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != base and base not in real.parents:
        raise error(f"{what} `{path}` leads outside `{root}` (to `{real}`); a run folder's files must "
                    "lie inside it: remove the link, or copy the file in")
    return real


def open_regular(path: Path, what: str, error: type[ChimufError] = StageError) -> int:
    """A read-only descriptor of `path`, refused unless it is a regular file. Opened without
    blocking, so a FIFO is refused instead of hanging the reader."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                    stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "a folder"
                    if stat.S_ISDIR(mode) else "not a regular file")
            raise error(f"{what} `{path}` is {kind}; chimuf reads regular files only")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: Path, limit: int, what: str, error: type[ChimufError] = StageError,
                 root: Path | None = None) -> bytes:
    """The bytes of the regular file `path`, refused when over `limit` bytes (a link to
    /dev/zero, a sparse file of gigabytes) and, with `root`, when it leads outside `root`.
    The one way chimuf reads a file someone else may have made."""
    if root is not None:
        inside(path, root, what, error)
    fd = open_regular(path, what, error)
    with os.fdopen(fd, "rb") as file:
        data = file.read(limit + 1)  # the size can grow after fstat: read at most one byte over
    if len(data) > limit:
        raise error(f"{what} `{path}` is larger than the {limit:,} bytes chimuf reads; it is not "
                    "a file chimuf wrote")
    return data


def own_folder(path: Path, root: Path, what: str, error: type[ChimufError] = StageError) -> Path:
    """`path`, a folder chimuf writes and deletes in, checked before it does: not a link, not
    another kind of file, inside `root`. A run folder from someone else (a tarball keeps links)
    could otherwise aim chimuf's writes anywhere the user can write."""
    if path.is_symlink():
        raise error(f"{what} `{path}` is a link (to `{path.readlink()}`); chimuf writes only in "
                    "folders of the run itself: remove the link and rerun")
    if path.exists() and not path.is_dir():
        raise error(f"{what} `{path}` is not a folder; remove it and rerun")
    inside(path.parent, root, what, error)
    return path


def copy_bounded(source: Path, target: Path, limit: int, what: str, root: Path,
                 error: type[ChimufError] = StageError) -> None:
    """Copy the regular file `source`, which must lie inside `root`, to `target` (atomically)."""
    atomic_write_bytes(target, read_bounded(source, limit, what, error, root))


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def safe_name(text: str) -> str:
    """`text` as a file name: letters, digits, '.', '_' and '-' only, at most 80 characters, safe
    on every file system and in a report (runs of anything else become one '_')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80]


# --- CSV for people (and their spreadsheets) ---------------------------------------------------

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV with a header row, every text cell defused for spreadsheets (`spreadsheet_safe`).

    Every CSV chimuf writes goes through here: file names and labels come from the data folder
    or the command line, so a file called `=HYPERLINK(...).jpg` must not become a formula."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([spreadsheet_safe(c) for c in header])
    for row in rows:
        writer.writerow([spreadsheet_safe(c) for c in row])
    return buffer.getvalue()


def spreadsheet_safe(cell: Any) -> Any:
    """`cell`, or for text that a spreadsheet would run as a formula, the text behind an apostrophe.

    OWASP's advice: a leading `'` makes the cell text (spreadsheets show it without the
    apostrophe), and the csv module quotes the cell where it holds a comma, quote or line break.
    Numbers stay numbers: a float, an int, or text that is a plain decimal number ("-0.5",
    "-1e-05") starts no formula, so a probability column is still a column of numbers.
    """
    if not isinstance(cell, str) or not cell.startswith(FORMULA_STARTS):
        return cell
    if PLAIN_NUMBER.fullmatch(cell):
        return cell
    return "'" + cell


# --- folders replaced in one step --------------------------------------------------------------

AT_FDCWD = -100
RENAME_EXCHANGE = 2  # linux/fs.h


def replace_dir(new: Path, target: Path) -> None:
    """Put the folder `new` in the place of `target` and remove the old one.

    On Linux the two are exchanged in one step (renameat2 RENAME_EXCHANGE), so a reader sees the
    old folder or the new one, never a mix of both and never none. Elsewhere (or on a file system
    without the exchange) the old one is renamed aside first: a reader may then find no folder
    for an instant, but still never a mix.
    """
    if not target.exists():
        new.rename(target)
    elif exchange(new, target):
        shutil.rmtree(new)  # `new` names the old folder now
    else:
        old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    fsync_dir(target.parent)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, musl)
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # a kernel or file system without it
        return False
    raise OSError(code, os.strerror(code), str(b))
