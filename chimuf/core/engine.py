"""The study engine: a run folder, stages that are skipped when their inputs are unchanged,
atomic results, and an honest run status.

The engine knows stages, not models. A stage is a name, the inputs it depends on (its slice of
the config, upstream outcomes wrapped in `Upstream`, which are fingerprinted by their digest) and a
function that does the work and returns an outcome dataclass. Every stage's inputs also carry the
run's provenance (chimuf's version and the installed packages' digest): a stage made by another
chimuf or other packages is redone, never silently mixed with this one's (docs/layout.md says why).
Layout of a run folder:

    runs/<run-id>/
        run.json             status: running | stopped | finished | failed | interrupted
        .lock                held (flock; msvcrt on Windows) by the study using the folder; says host and pid
        study.log            everything the console said
        stages/<name>.json   a finished stage: inputs, their fingerprint, outcome
        <name>/              the stage's own files (models, figures, checkpoints)
        results.json         every finished outcome, gathered for the report

A rerun reads stages/<name>.json; if the fingerprint of the new inputs matches, the stage is
skipped. If not, the engine says which input changed and runs it again. A stage's folder keeps
partial work (checkpoints, finished sub-units) for a rerun with the same inputs; with different
inputs it is emptied first, so stale work is never resumed.

One study at a time uses a run folder: it holds an exclusive lock on `.lock` while it runs
(`flock` on POSIX; on Windows, msvcrt's lock on one byte past the holder's note, which stays
readable). The kernel drops the lock when the process ends, however it ends, so a killed study
never locks its folder out, and a process id reused by another program means nothing. On NFS,
Linux maps flock to the server's byte-range locks, so two machines sharing a run folder see each
other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from chimuf.core.console import Console, format_seconds
from chimuf.core.errors import ChimufError, Interrupted, StageError
from chimuf.core.files import atomic_write_json, atomic_write_text, now_iso, read_json
from chimuf.core.results import LayoutError, StageFact, digest, from_jsonable, to_jsonable

T = TypeVar("T")

RUN_STATES = ("running", "stopped", "finished", "failed", "interrupted")
LOCK_FILE = ".lock"  # in the run folder, locked by the study using it
ATTEMPTS_FILE = ".attempts.json"  # in the stage's work folder, while the stage is unfinished
INPUTS_FILE = ".inputs"  # in the stage's work folder: the fingerprint its partial work was made from


# --- what a stage depends on -------------------------------------------------------------------


@dataclass(frozen=True)
class Upstream:
    """An earlier stage's outcome as an input of a later one: fingerprinted by its identity (its
    `digest` field where it has one, else the digest of the whole outcome), handed over whole."""

    outcome: Any

    def fingerprint(self) -> str:
        own = getattr(self.outcome, "digest", None)
        return own if isinstance(own, str) and own else digest(to_jsonable(self.outcome))


def fingerprinted(value: Any) -> Any:
    """`value` as a stage's inputs are fingerprinted and saved: JSON values, upstream outcomes as
    their digests, and without the config fields marked as changing no result (metadata
    `fingerprinted: False`, e.g. how long a chief waits for a worker)."""
    if isinstance(value, Upstream):
        return value.fingerprint()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: fingerprinted(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("fingerprinted", True)}
    if isinstance(value, dict):
        return {str(k): fingerprinted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fingerprinted(v) for v in value]
    return to_jsonable(value)


def unwrapped(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` as the stage's work gets them: upstream outcomes whole."""
    return {k: v.outcome if isinstance(v, Upstream) else v for k, v in inputs.items()}


# --- what changed between two sets of inputs ---------------------------------------------------


def changed_inputs(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable list of the leaves that differ: ["train.epochs: 50 → 2", ...]."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += changed_inputs(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old != new:
        name = prefix.rstrip(".")
        if isinstance(old, str) and isinstance(new, str) and len(old) == 64 == len(new):
            return [f"{name} changed"]  # digests: the values say nothing to a reader
        return [f"{name}: {short(old)} → {short(new)}"]
    return []


def short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# --- stage context -----------------------------------------------------------------------------


@dataclass
class StageContext:
    """What a running stage gets from the engine: its folder, the console, and unit memoising."""

    name: str
    dir: Path  # the stage's own folder, runs/<id>/<name>/
    run_dir: Path
    console: Console

    def rel(self, path: Path) -> str:
        """`path` relative to the run folder, as outcomes store it."""
        return Path(path).resolve().relative_to(self.run_dir.resolve()).as_posix()

    def unit(self, name: str, outcome_type: type[T], work: Callable[[], T]) -> T:
        """Run one resumable piece of a stage (a training, a fold) once.

        Its outcome is saved atomically under units/<name>.json; a rerun of the same stage with
        the same inputs returns the saved outcome instead of doing the work again.
        """
        path = self.dir / "units" / f"{name}.json"
        saved = read_json(path)
        reused = fitting_outcome(outcome_type, saved) if saved is not None else None
        if reused is not None:
            self.console.info(f"  {name}: already done, reused")
            return reused
        outcome = work()
        atomic_write_json(path, outcome)
        return outcome


# --- the run -----------------------------------------------------------------------------------


class Run:
    """A run folder and its status. Stages run through `stage`; status through `activate`."""

    def __init__(self, root: Path, console: Console, provenance: dict[str, str] | None = None):
        self.root = root
        self.console = console
        self.provenance = provenance or {}  # added to every stage's inputs
        self.facts: dict[str, StageFact] = {}
        self.state = self.read_state()

    @property
    def run_id(self) -> str:
        return self.root.name

    # 1. status ---------------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        return read_json(self.root / "run.json") or {}

    def write_state(self, **changes: Any) -> None:
        self.state.update(changes, updated_at=now_iso())
        self.state["stages"] = [to_jsonable(f) for f in self.facts.values()]
        atomic_write_json(self.root / "run.json", self.state)

    @contextlib.contextmanager
    def activate(self, info: dict[str, Any]) -> Iterator[Run]:
        """Hold the run folder's lock and mark the run `running` for the duration; `failed` or
        `interrupted` if it ends badly.

        The caller marks it `finished` (with `finish`) only when every stage has completed, or
        `stopped` (with `stop`) when it ends early on purpose.
        """
        self.check_writable()
        lock = hold_lock(self.root)
        try:
            with self.running(info):
                yield self
        finally:
            release_lock(lock)

    @contextlib.contextmanager
    def running(self, info: dict[str, Any]) -> Iterator[None]:
        """The status part of `activate`: say how the last attempt ended, then record this one's."""
        self.state = self.read_state()  # as the last holder of the lock left it
        previous = self.state.get("status")
        if previous == "running":
            self.console.warn("the previous attempt of this run was killed; resuming it")
        elif previous == "stopped":
            self.console.info(f"the previous attempt stopped after `{self.state.get('stopped_after', '?')}` "
                              "as asked; resuming")
        elif previous in ("failed", "interrupted"):
            self.console.info(f"the previous attempt {previous}; resuming")
        self.state.setdefault("started_at", now_iso())
        self.state.pop("stopped_after", None)
        self.write_state(status="running", pid=os.getpid(), error="", **info)
        try:
            yield
        except (Interrupted, KeyboardInterrupt):
            self.write_state(status="interrupted", error="stopped by a signal")
            raise
        except ChimufError as exc:
            self.write_state(status="failed", error=str(exc))
            raise
        except BaseException as exc:
            with contextlib.suppress(OSError):
                self.write_state(status="failed", error=f"{type(exc).__name__}: {exc}")
            raise

    def finish(self) -> None:
        self.write_state(status="finished")

    def stop(self, after: str) -> None:
        """Record that the study ended on purpose after stage `after` (--stop-after): resumable,
        and no sign of a kill."""
        self.write_state(status="stopped", stopped_after=after)

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StageError(
                f"run folder `{self.root}` is not writable ({exc.strerror}); "
                "choose another with --out or fix its permissions"
            ) from None

    # 2. stages ---------------------------------------------------------------------------------

    def outcome_path(self, name: str) -> Path:
        return self.root / "stages" / f"{name}.json"

    def load_outcome(self, name: str, outcome_type: type[T]) -> T | None:
        """The finished outcome of stage `name`, whatever its inputs were; None when there is none
        (or it was saved by a chimuf whose outcome layout differs)."""
        saved = read_json(self.outcome_path(name))
        return None if saved is None else fitting_outcome(outcome_type, saved.get("outcome"))

    def reusable_outcome(self, name: str, inputs: dict[str, Any], outcome_type: type[T]) -> T | None:
        """The finished outcome of stage `name` if it was made from exactly `inputs`, else None.

        What `stage` would reuse, for a reader that must not run the stage (a tuning worker)."""
        saved = read_json(self.outcome_path(name))
        if saved is None or saved.get("fingerprint") != digest(self.fingerprinted(inputs)):
            return None
        return fitting_outcome(outcome_type, saved.get("outcome"))

    def stage(
        self,
        name: str,
        inputs: dict[str, Any],
        outcome_type: type[T],
        work: Callable[[StageContext], T],
        still_valid: Callable[[T], bool] = lambda outcome: True,
    ) -> T:
        """Run stage `name` unless a finished outcome with the same inputs exists.

        `still_valid` checks a saved outcome against the world outside the run folder (a
        shared cache file that may have been deleted); when it says no, the stage runs again.
        """
        inputs = self.fingerprinted(inputs)
        fingerprint = digest(inputs)
        saved = read_json(self.outcome_path(name))
        reused = fitting_outcome(outcome_type, saved.get("outcome")) if saved is not None else None
        if (reused is not None and saved.get("fingerprint") == fingerprint and still_valid(reused)):
            self.console.info(f"[{name}] unchanged since {saved.get('finished_at', '?')}: reused")
            self.facts[name] = StageFact(name, "skipped", saved.get("wall_s", 0.0), saved.get("attempts", 1))
            self.write_state()
            return reused
        if saved is not None:
            changes = changed_inputs(saved.get("inputs", {}), inputs) or ["inputs changed"]
            if reused is None:
                changes = ["its saved outcome has another layout (made by another chimuf version)"]
            self.console.info(f"[{name}] redone because " + "; ".join(changes))

        stage_dir = self.root / name
        self.prepare_stage_dir(stage_dir, fingerprint)
        self.console.info(f"[{name}] running")
        self.facts[name] = StageFact(name, "running", 0.0)
        self.write_state(current_stage=name)
        earlier_s, earlier_attempts = open_attempt(stage_dir)
        attempts = earlier_attempts + 1
        started = time.monotonic()
        context = StageContext(name, stage_dir, self.root, self.console)
        try:
            outcome = work(context)
        except BaseException:
            spent_s = earlier_s + time.monotonic() - started
            with contextlib.suppress(OSError):  # a full disk must not hide the stage's own error
                close_attempt(stage_dir, spent_s, attempts)
            self.facts[name] = StageFact(name, "failed", spent_s, attempts)
            raise
        this_attempt_s = time.monotonic() - started
        wall_s = earlier_s + this_attempt_s
        atomic_write_json(
            self.outcome_path(name),
            {
                "stage": name,
                "fingerprint": fingerprint,
                "inputs": inputs,
                "finished_at": now_iso(),
                "wall_s": wall_s,
                "attempts": attempts,
                "outcome": outcome,
            },
        )
        (stage_dir / ATTEMPTS_FILE).unlink(missing_ok=True)
        self.facts[name] = StageFact(name, "done", wall_s, attempts)
        self.write_state(current_stage="")
        over = f"; {format_seconds(wall_s)} over {attempts} attempts" if earlier_attempts else ""
        self.console.info(f"[{name}] done in {format_seconds(this_attempt_s)}{over}")
        return outcome

    def fingerprinted(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A stage's inputs as saved and compared, the run's provenance included."""
        return fingerprinted({**inputs, "provenance": self.provenance} if self.provenance else inputs)

    def switched_off(self, name: str, why: str) -> None:
        """Record that stage `name` does not run in this study, by the config (`why`)."""
        self.console.info(f"[{name}] off ({why})")
        self.facts[name] = StageFact(name, "off", 0.0, 0)
        self.write_state()

    def prepare_stage_dir(self, stage_dir: Path, fingerprint: str) -> None:
        """Keep partial work made from the same inputs; discard work made from other inputs."""
        marker = stage_dir / INPUTS_FILE
        if stage_dir.exists():
            old = marker.read_text().strip() if marker.exists() else ""
            if old == fingerprint:
                return
            self.console.info(f"  discarding partial work in `{stage_dir.name}/` (other inputs)")
            shutil.rmtree(stage_dir)
        stage_dir.mkdir(parents=True)
        atomic_write_text(marker, fingerprint + "\n")


# --- the time a stage took, over attempts -------------------------------------------------------


def open_attempt(stage_dir: Path) -> tuple[float, int]:
    """Seconds spent and attempts made on this stage before now (same inputs); record this one.

    A stopped or failed attempt adds its time when it ends. A killed one cannot, so this attempt
    is marked open, and a later one counts it up to the last file it wrote.
    """
    record = read_json(stage_dir / ATTEMPTS_FILE) or {}
    spent_s, attempts = float(record.get("spent_s", 0.0)), int(record.get("attempts", 0))
    if "open_since" in record:
        spent_s += max(0.0, last_write(stage_dir) - float(record["open_since"]))
        attempts += 1
    atomic_write_json(stage_dir / ATTEMPTS_FILE,
                      {"spent_s": spent_s, "attempts": attempts, "open_since": time.time()})
    return spent_s, attempts


def close_attempt(stage_dir: Path, spent_s: float, attempts: int) -> None:
    """Record a stopped or failed attempt's time, so the next attempt adds to it."""
    atomic_write_json(stage_dir / ATTEMPTS_FILE, {"spent_s": spent_s, "attempts": attempts})


def last_write(folder: Path) -> float:
    """The newest modification time (epoch seconds) of the stage's work under `folder`."""
    bookkeeping = {folder / ATTEMPTS_FILE, folder / INPUTS_FILE}
    return max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file() and p not in bookkeeping),
               default=0.0)


def fitting_outcome(outcome_type: type[T], data: Any) -> T | None:
    """`data` read back as `outcome_type`; None when it does not fit (saved by a chimuf whose
    outcome layout differs: an unknown or missing key, a value of another type), so that the work
    is done again rather than misread."""
    try:
        return from_jsonable(outcome_type, data)
    except (LayoutError, TypeError, KeyError, ValueError, AttributeError):
        return None


def hold_lock(root: Path) -> int:
    """An exclusive lock on `root/.lock` (its file descriptor), or StageError naming the host and
    process that hold it. The lock lasts until `release_lock`, or until the process ends."""
    # O_BINARY: Windows would otherwise write the note's newline as \r\n
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
    try:
        locked = try_lock(fd)
    except OSError:
        os.close(fd)
        raise
    if not locked:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise StageError(
            f"run folder `{root}` is in use by {holder}; wait for it, stop it, or choose another "
            "folder with --out"
        )
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"process {os.getpid()} on host {socket.gethostname()}\n".encode())
    return fd


# Windows locks byte ranges, and a locked range cannot be read by others: lock one byte far past
# the holder's note (Windows allows locking past the end of a file) so that the note stays readable.
WINDOWS = os.name == "nt"
WINDOWS_LOCK_OFFSET = 1 << 20


def try_lock(fd: int) -> bool:
    """Lock `fd` exclusively without waiting; False when another process holds the lock."""
    if WINDOWS:
        import msvcrt

        os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:  # EACCES: held elsewhere; EDEADLOCK where the C runtime says so
            if exc.errno in (errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)):
                return False
            raise
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def release_lock(fd: int) -> None:
    """Give the lock of `hold_lock` back and close its descriptor (Windows wants the unlock first:
    it releases a closed file's locks only when the system gets to it)."""
    try:
        if WINDOWS:
            import msvcrt

            os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            with contextlib.suppress(OSError):
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)
