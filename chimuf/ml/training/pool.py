"""The independent units of a stage (the six trainings, the k-fold folds) in a pool of local
worker processes.

    study's process: the units not saved yet → one to each idle worker → lines, ETA questions and
        "done" back through one queue → the next unit to that worker → the outcomes, in unit order
    worker process: TensorFlow started with `threads` threads → for each unit it is handed: the
        unit through ctx.unit (units/<name>.json, checkpoints, TensorBoard) → "done" or "failed"

Why the numbers do not depend on the pool's size: every unit seeds itself (chimuf.ml.training.fit) and
runs with the same fixed number of TensorFlow threads, in a worker as in the study's own process
(chimuf.ml.tfstart sets them before TensorFlow's runtime starts). With one worker, or with Keras
callbacks of the user's (which cannot cross processes), the units run in the study's process,
one after another, as they always did.

Workers live for the whole stage and take one unit after another, because starting TensorFlow
costs seconds to tens of seconds per process. A worker that dies (killed, out of memory) fails
its unit with a one-line error and is replaced; the unit's checkpoints stay, so a rerun resumes
it. The study's clock lives in the study's process: it is told how many units run at once, a
worker asks it for the ETA after each epoch, and it hears when each unit ends (chimuf.core.plan
schedules the stage's units on its workers; see docs/parallel.md). Multi-GPU: one worker per GPU,
each seeing only its own (CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from chimuf.core.console import ForwardingConsole, unit_line
from chimuf.core.engine import StageContext, fitting_outcome
from chimuf.core.environment import environ_for
from chimuf.core.files import read_json
from chimuf.ml.training.fit import Monitoring

T = TypeVar("T")

ETA_MARK = "{study ETA}"  # a worker's epoch line says this; the study's process fills it in
POLL_S = 0.5  # how often the study's process looks at its workers while none speaks
JOIN_S = 10.0  # how long a finished worker may take to exit before it is stopped

Recorded = Callable[[], tuple[type[BaseException], ...]]  # the failures a stage records and goes on


@dataclass(frozen=True)
class Unit(Generic[T]):
    """One independent unit of a stage: its name (units/<name>.json) and its work, called as
    `work(ctx, monitor)`; a module-level function (or a partial of one), so a worker can get it."""

    name: str
    work: Callable[[StageContext, Monitoring], T]


@dataclass(frozen=True)
class UnitFailure:
    """A unit that did not finish: its one-line error; `fatal` when it is none of the failures the
    stage records and goes on from (it should then stop the stage)."""

    name: str
    error: str
    fatal: bool
    wall_s: float = 0.0


# --- how many workers, and on what -------------------------------------------------------------


def machine_cores() -> int:
    """The cores this process may run on (its affinity: a container's limit, taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def visible_gpus(count: int, environ: dict[str, str] | None = None) -> list[str]:
    """The ids to give CUDA_VISIBLE_DEVICES for the `count` GPUs TensorFlow sees: the ones the user
    narrowed it to (`CUDA_VISIBLE_DEVICES=2,3` → "2", "3"), else 0 .. count-1."""
    environ = os.environ if environ is None else environ
    narrowed = [part.strip() for part in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if "CUDA_VISIBLE_DEVICES" in environ:
        return narrowed[:count]
    return [str(index) for index in range(count)]


def worker_slots(workers: int, threads: int, cores: int, gpus: Sequence[str], units: int) -> list[str | None]:
    """One entry per worker process: the GPU it alone sees, or None on a machine without GPUs.

    `workers` 0 means one per GPU, else one per `threads` cores; never more than there are GPUs
    (two trainings on one GPU would share its memory) nor than `units`; at least one.
    """
    if gpus:
        slots: list[str | None] = list(gpus[:workers] if workers else gpus)
    else:
        slots = [None] * (workers or max(1, cores // threads))
    return slots[:max(1, units)]


def local_gpus() -> list[str]:
    import tensorflow as tf

    return visible_gpus(len(tf.config.list_physical_devices("GPU")))


# --- running the units -------------------------------------------------------------------------


def run_units(ctx: StageContext, units: Sequence[Unit[T]], outcome_type: type[T], workers: int,
              threads: int, monitor: Monitoring, recorded: Recorded | None = None) -> list[T | UnitFailure]:
    """Each unit's outcome (saved ones reused), in the order of `units`; a failure the stage
    records (`recorded`), a fatal one in a worker, or a worker's death as a UnitFailure.

    In the study's process (one worker, one unit left to run, or the user's callbacks) a fatal
    failure is raised as it is, as before there was a pool.
    """
    saved = [unit.name for unit in units if saved_outcome(ctx, unit.name, outcome_type) is not None]
    slots = worker_slots(workers, threads, machine_cores(), local_gpus(), len(units) - len(saved))
    if len(slots) > 1 and monitor.callbacks:
        ctx.console.info(f"  Keras callbacks cannot cross processes: the {len(units)} units run one after "
                         "another in this process")
        slots = slots[:1]
    if monitor.clock is not None:
        monitor.clock.pooled(ctx.name, len(slots))
        for name in saved:  # reused: the clock no longer waits for them
            monitor.clock.unit_done(ctx.name, name, learn=False)
    if len(slots) <= 1:
        return [run_here(ctx, unit, outcome_type, monitor, recorded) for unit in units]
    return Pool(ctx, outcome_type, slots, threads, monitor, recorded).run(units)


def run_here(ctx: StageContext, unit: Unit[T], outcome_type: type[T], monitor: Monitoring,
             recorded: Recorded | None) -> T | UnitFailure:
    started, caught = time.monotonic(), recorded() if recorded else ()
    try:
        outcome = ctx.unit(unit.name, outcome_type, functools.partial(unit.work, ctx, monitor))
    except caught as exc:
        if monitor.clock is not None:  # a failure: no lesson on epochs
            monitor.clock.unit_done(ctx.name, unit.name, learn=False)
        return UnitFailure(unit.name, f"{type(exc).__name__}: {exc}", False, time.monotonic() - started)
    if monitor.clock is not None:
        monitor.clock.unit_done(ctx.name, unit.name)
    return outcome


def saved_outcome(ctx: StageContext, name: str, outcome_type: type[T]) -> T | None:
    saved = read_json(ctx.dir / "units" / f"{name}.json")
    return fitting_outcome(outcome_type, saved) if saved is not None else None


@dataclass
class Worker:
    """The study's side of one worker process: its GPU, its task queue, the unit it runs."""

    slot: str | None
    process: Any
    tasks: Any
    unit: str | None = None
    started: float = 0.0


@dataclass
class Pool(Generic[T]):
    """Worker processes for one stage's units (spawned: no TensorFlow state is inherited)."""

    ctx: StageContext
    outcome_type: type[T]
    slots: list[str | None]
    threads: int
    monitor: Monitoring
    recorded: Recorded | None
    results: dict[str, T | UnitFailure] = field(default_factory=dict)
    etas: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mp = multiprocessing.get_context("spawn")
        self.events = self.mp.Queue()

    def run(self, units: Sequence[Unit[T]]) -> list[T | UnitFailure]:
        pending = []
        for unit in units:
            saved = saved_outcome(self.ctx, unit.name, self.outcome_type)
            if saved is None:
                pending.append(unit)
            else:
                self.ctx.console.info(f"  {unit.name}: already done, reused")
                self.results[unit.name] = saved
        if pending:
            self.ctx.console.info(f"  {len(pending)} units in {min(len(pending), len(self.slots))} worker "
                                  f"processes of {self.threads} TensorFlow threads each")
        workers = [self.start(slot) for slot in self.slots[:len(pending)]]
        try:
            self.serve(workers, pending)
        finally:
            self.stop(workers)
        return [self.results[unit.name] for unit in units]

    def serve(self, workers: list[Worker], pending: list[Unit[T]]) -> None:
        """Hand out units until every one has an outcome or a failure."""
        while True:
            for worker in workers:
                if worker.unit is None and pending:
                    self.hand(worker, pending.pop(0))
            if all(worker.unit is None for worker in workers):
                return
            try:
                self.handle(self.events.get(timeout=POLL_S), workers)
            except queue.Empty:
                for index, worker in enumerate(workers):
                    if worker.unit is not None and not worker.process.is_alive():
                        workers[index] = self.bury(worker, workers, replace=bool(pending))

    def start(self, slot: str | None) -> Worker:
        tasks = self.mp.Queue()
        process = self.mp.Process(target=worker_main, args=(self.threads, tasks, self.events), daemon=True)
        with environ_for({"CUDA_VISIBLE_DEVICES": slot} if slot is not None else {}):
            process.start()
        return Worker(slot, process, tasks)

    def hand(self, worker: Worker, unit: Unit[T]) -> None:
        task = Task(unit, self.ctx.name, self.ctx.dir, self.ctx.run_dir, self.outcome_type,
                    self.monitor.tensorboard_dir, self.monitor.clock is not None, self.recorded)
        worker.tasks.put(pickle.dumps(task))
        worker.unit, worker.started = unit.name, time.monotonic()

    def handle(self, event: tuple[Any, ...], workers: list[Worker]) -> None:
        kind, unit = event[0], event[1]
        if kind == "line":
            _, _, message, echo, log = event
            message = message.replace(ETA_MARK, self.etas.get(unit, ""))
            self.ctx.console.write(unit_line(unit, message), echo=echo, log=log)
        elif kind == "eta":
            _, _, epoch, max_epochs, epoch_s = event
            clock = self.monitor.clock
            self.etas[unit] = clock.eta(self.ctx.name, unit)(epoch, max_epochs, epoch_s) if clock else ""
        elif kind == "done":
            outcome = saved_outcome(self.ctx, unit, self.outcome_type)
            self.results[unit] = outcome if outcome is not None else UnitFailure(
                unit, f"{unit}: its worker finished but units/{unit}.json cannot be read back", True)
            self.free(unit, workers, finished=outcome is not None)
        elif kind == "failed":
            _, _, error, fatal, wall_s = event
            self.results[unit] = UnitFailure(unit, error, fatal, wall_s)
            self.free(unit, workers)

    def free(self, unit: str, workers: list[Worker], finished: bool = False) -> None:
        """`unit` has ended: its worker takes the next; the clock stops waiting for it and, when it
        `finished` (early stopping decided its end, not a failure), learns its epochs."""
        if self.monitor.clock is not None:
            self.monitor.clock.unit_done(self.ctx.name, unit, learn=finished)
        for worker in workers:
            if worker.unit == unit:
                worker.unit = None

    def bury(self, worker: Worker, workers: list[Worker], replace: bool) -> Worker:
        """A worker that died with a unit in hand: what it said last is read, its unit is done if
        its outcome was saved, else failed; a fresh worker takes its place if units wait."""
        while True:
            try:
                self.handle(self.events.get_nowait(), workers)
            except queue.Empty:
                break
        unit = worker.unit
        if unit is not None:
            outcome = saved_outcome(self.ctx, unit, self.outcome_type)
            self.results[unit] = outcome if outcome is not None else UnitFailure(
                unit, death_message(unit, worker.process.pid, worker.process.exitcode), False,
                time.monotonic() - worker.started)
            self.free(unit, [worker], finished=outcome is not None)
        return self.start(worker.slot) if replace else worker

    def stop(self, workers: list[Worker]) -> None:
        """Ask every worker to exit; stop those that do not (a stage interrupted mid-unit: its
        checkpoints stay for the rerun)."""
        for worker in workers:
            if worker.process.is_alive():
                if worker.unit is None:
                    worker.tasks.put(None)
                else:
                    worker.process.terminate()
        deadline = time.monotonic() + JOIN_S
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()


def death_message(unit: str, pid: int | None, exitcode: int | None) -> str:
    """One line: which unit, how its worker ended, what to do."""
    how = f"exit code {exitcode}"
    if exitcode is not None and exitcode < 0:
        try:
            how = f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"signal {-exitcode}"
    return (f"{unit}: its worker process (pid {pid}) ended by {how} before the unit finished (killed, or "
            "out of memory?); rerun the study to resume it from its last checkpoint")


# --- the worker's side -------------------------------------------------------------------------


@dataclass(frozen=True)
class Task(Generic[T]):
    """What a worker needs to run one unit as the study's process would."""

    unit: Unit[T]
    stage: str
    stage_dir: Path
    run_dir: Path
    outcome_type: type[T]
    tensorboard_dir: Path | None
    clocked: bool  # the study has a clock: ask it for the ETA after each epoch
    recorded: Recorded | None


class RemoteClock:
    """The study's clock as a worker sees it: an epoch's numbers go to the study's process, and
    the epoch line carries ETA_MARK for it to fill in."""

    def __init__(self, events: Any, unit: str):
        self.events, self.unit = events, unit

    def eta(self, stage: str, name: str) -> Callable[[int, int, float], str]:
        def after_epoch(epoch: int, max_epochs: int, epoch_s: float) -> str:
            self.events.put(("eta", self.unit, epoch, max_epochs, epoch_s))
            return ETA_MARK

        return after_epoch


def worker_main(threads: int, tasks: Any, events: Any) -> None:
    """A worker process: TensorFlow with `threads` threads first (before anything imports it: a
    task is unpickled only afterwards), then one unit after another until told to stop."""
    from chimuf.ml.tfstart import quiet_tensorflow, start_tensorflow

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the study's to handle: it stops us
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    quiet_tensorflow()
    start_tensorflow(threads)
    while True:
        payload = tasks.get()
        if payload is None:
            return
        run_task(pickle.loads(payload), events)


def exit_with_parent(parent: int) -> None:
    """End this worker when the study's process is gone (killed: it cannot stop us), so that no
    orphan goes on writing into a run folder that a rerun now uses."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def run_task(task: Task[Any], events: Any) -> None:
    name = task.unit.name
    console = ForwardingConsole(lambda message, echo, log: events.put(("line", name, message, echo, log)))
    warnings.showwarning = console.log_warning  # into the run's log, not across the study's lines
    ctx = StageContext(task.stage, task.stage_dir, task.run_dir, console)
    clock = RemoteClock(events, name) if task.clocked else None
    monitor = Monitoring(task.tensorboard_dir, (), clock)  # type: ignore[arg-type]  # a clock by duck typing
    started = time.monotonic()
    try:
        ctx.unit(name, task.outcome_type, functools.partial(task.unit.work, ctx, monitor))
    except Exception as exc:  # noqa: BLE001 - any failure goes to the study, which records it or stops
        fatal = not (task.recorded is not None and isinstance(exc, task.recorded()))
        events.put(("failed", name, f"{type(exc).__name__}: {exc}", fatal, time.monotonic() - started))
        return
    events.put(("done", name))
