"""Past one machine: the search's trials on several workers, a training on several GPUs.

The hyperparameter search is the study's one stage made of many independent, long units (a trial
trains a model for up to `tune.epochs` epochs), so it is the stage that runs on several machines.
Keras Tuner's distributed mode does the sharing: one chief holds the oracle, workers ask it for a
trial, train it, report, and ask again, over gRPC.

    chimuf study --tune-chief HOST:PORT     the study; during `tune` it is the chief and serves the
                                            oracle (serve_search) until every trial is done
    chimuf tune-worker --chief HOST:PORT    a worker (run_worker): the chief's split and image
                                            cache, then trials until the chief says stop

Keras Tuner learns its role from three environment variables (KERASTUNER_TUNER_ID: "chief" or a
worker id; KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT); `tuner_role` sets them for the time a
tuner is built and searched, and puts the old values back.

Two things chimuf adds on top of Keras Tuner's protocol, whose messages stay as they are:

1. Each finished epoch travels to the chief as an UpdateTrial with metrics named `epoch_*` (step =
   epoch index): the trial's history reaches the chief's run folder though the worker may share no
   file system with it, and every epoch is a sign of life. The chief's oracle (ChiefOracle) files
   these reports beside the trial's metrics; they do not name the objective, so Keras Tuner's own
   final report of the trial (objective at its best epoch) still comes, as in a local search.
2. The chief's loop is chimuf's own (serve_search), not Keras Tuner's `start_server`, which waits
   forever for a trial whose worker died. A trial whose worker has been silent for longer than
   `tune.worker_timeout_s` is ended FAILED, with the reason; the search goes on. It is not
   requeued: a worker that dies in a trial may have died of it (memory), and a FAILED trial costs
   one trial of the budget, never a loop of crashing workers. A worker restarted with the same
   `--id` before the timeout gets its trial back (Keras Tuner's own rule) and trains it again.

A worker whose chief stops answering ends with one line (ChiefLost, rpc_reason), not with a failed
trial. On a machine with several GPUs, `training_strategy` mirrors each trial's training over all
of them (and every other training, once chimuf.train builds its models in that strategy's scope).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chimuf.core.config import as_dict, flatten
from chimuf.core.engine import Run, read_json
from chimuf.core.errors import ConfigError, StageError
from chimuf.core.results import CacheOutcome, EpochRecord, SplitOutcome, from_jsonable, to_jsonable

if TYPE_CHECKING:
    from chimuf.core.config import StudyConfig
    from chimuf.core.console import Console

CHIEF_ID = "chief"  # Keras Tuner takes any tuner id containing "chief" for the chief
ENV_NAMES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
EPOCH_PREFIX = "epoch_"  # metrics of an epoch report; never the objective
POLL_S = 0.5  # how often the chief looks for silent workers and finished trials
STOP_GRACE_S = 30.0  # after the last trial, how long the chief answers workers asking for more
SERVER_THREADS = 4  # the oracle's methods hold one lock; threads only keep slow calls from queuing
WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


# --- 1. addresses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    host: str  # a name or IP address; for the chief, 0.0.0.0 listens on every interface
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, flag: str) -> Address:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) as an Address; `flag` names the option in errors."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\w+)|([^\s:\[\]]+):(\w+)", text.strip())
    if match is None:
        raise ConfigError(f"`{flag}` must be HOST:PORT (e.g. 10.0.0.5:8470 or [::1]:8470), got {text!r}")
    host = match.group(1) or match.group(3)
    port = match.group(2) or match.group(4)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"`{flag}` port must be a number from 1 to 65535, got {port!r} in {text!r}")
    return Address(host, int(port))


def check_worker_id(worker_id: str) -> str:
    """A worker id names files and must not read as the chief's to Keras Tuner."""
    if not WORKER_ID.fullmatch(worker_id) or CHIEF_ID in worker_id.lower():
        raise ConfigError(
            f"`--id` must be 1-64 letters, digits, '.', '_' or '-' and must not contain "
            f"'{CHIEF_ID}' (Keras Tuner would take the worker for the chief), got {worker_id!r}"
        )
    return worker_id


def default_worker_id() -> str:
    """`worker-<hostname>-<pid>`, made safe for `check_worker_id`."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()).lower().replace(CHIEF_ID, "chf")
    return f"worker-{host[:40]}-{os.getpid()}"


# --- 2. roles: Keras Tuner's environment variables, set and restored ---------------------------


@contextlib.contextmanager
def tuner_role(tuner_id: str, address: Address) -> Iterator[None]:
    """Keras Tuner sees this process as `tuner_id` of the search served at `address`, inside the
    block only; whatever the three variables held before (or their absence) comes back after."""
    saved = {name: os.environ.get(name) for name in ENV_NAMES}
    os.environ.update(KERASTUNER_TUNER_ID=tuner_id, KERASTUNER_ORACLE_IP=address.host,
                      KERASTUNER_ORACLE_PORT=str(address.port))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def client_timeout(seconds: float) -> Iterator[None]:
    """Each request of a worker to the chief waits at most `seconds` (Keras Tuner: one hour), so a
    worker whose chief is gone says so instead of hanging; restored afterwards."""
    from keras_tuner.src.distribute import oracle_client

    saved = oracle_client.TIMEOUT
    oracle_client.TIMEOUT = seconds
    try:
        yield
    finally:
        oracle_client.TIMEOUT = saved


# --- 3. epoch reports: a trial's history, as metrics that travel over gRPC ---------------------


def epoch_metrics(record: EpochRecord, elapsed_s: float) -> dict[str, float]:
    """One finished epoch as an UpdateTrial's metrics: `epoch_loss`, ..., `epoch_elapsed_s`."""
    values = {name: float(value) for name, value in asdict(record).items() if name != "epoch"}
    return {f"{EPOCH_PREFIX}{name}": value for name, value in {**values, "elapsed_s": elapsed_s}.items()}


class ChiefLost(StageError):
    """A worker's request to the chief failed (the chief is gone or unreachable)."""


def report_epoch(oracle: Any, trial_id: str, record: EpochRecord, elapsed_s: float) -> None:
    """Send one finished epoch to the chief. A chief that cannot be reached ends the worker's
    search (ChiefLost), rather than failing the trial that was training well."""
    import grpc

    try:
        oracle.update_trial(trial_id, epoch_metrics(record, elapsed_s), step=record.epoch - 1)
    except grpc.RpcError as exc:
        raise ChiefLost(rpc_reason(exc)) from None


def is_epoch_report(metrics: Any) -> bool:
    return len(metrics) > 0 and all(str(name).startswith(EPOCH_PREFIX) for name in metrics)


def history_from_metrics(trial: Any) -> tuple[list[EpochRecord], float]:
    """The epochs a trial reported to the chief, and its elapsed seconds after the last one.

    Should an epoch have come twice, its later values are kept.
    """
    tracker = trial.metrics
    names = [name for name in tracker.metrics if name.startswith(EPOCH_PREFIX)]
    by_step: dict[int, dict[str, float]] = {}
    for name in names:
        for observation in tracker.get_history(name):
            by_step.setdefault(int(observation.step), {})[name[len(EPOCH_PREFIX):]] = observation.value[-1]
    known = {f.name for f in fields(EpochRecord)} - {"epoch"}
    history = [EpochRecord(epoch=step + 1, **{k: v for k, v in by_step[step].items() if k in known})
               for step in sorted(by_step)]
    return history, (by_step[max(by_step)].get("elapsed_s", 0.0) if by_step else 0.0)


def forget_epochs(trial: Any) -> None:
    """Drop a trial's epoch reports: it starts again from its first epoch (a retry, a worker
    restarted with the same id, a local rerun), and its history with it."""
    for name in [name for name in trial.metrics.metrics if name.startswith(EPOCH_PREFIX)]:
        del trial.metrics.metrics[name]


# --- 4. the chief ------------------------------------------------------------------------------


def chief_oracle_class(base: type) -> type:
    """`base` (a Keras Tuner oracle) with what the chief needs: epoch reports, who runs each
    trial, when each trial's worker last spoke, and ending the trials of silent workers."""
    import keras_tuner as kt

    class ChiefOracle(base):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            # Keras Tuner raises inside end_trial, in a gRPC thread, leaving the trial half ended;
            # serve_search checks the limit itself and stops cleanly.
            self.failure_limit = self.max_consecutive_failed_trials
            self.max_consecutive_failed_trials = None
            self.last_heard: dict[str, float] = {}  # trial id -> time.monotonic() of its last call
            self.trial_workers: dict[str, str] = {}  # trial id -> worker id
            self.stop_sent = False  # a worker was told the search is over

        @kt.synchronized
        def create_trial(self, tuner_id: str) -> Any:
            trial = super().create_trial(tuner_id)
            if trial.status == "RUNNING":
                forget_epochs(trial)
                self.last_heard[trial.trial_id] = time.monotonic()
                self.trial_workers[trial.trial_id] = tuner_id
            elif trial.status == "STOPPED":
                self.stop_sent = True
            return trial

        @kt.synchronized
        def update_trial(self, trial_id: str, metrics: Any, step: int = 0) -> Any:
            self.last_heard[trial_id] = time.monotonic()
            trial = self.trials[trial_id]
            if trial_id in self.end_order:  # given up on: its late reports change nothing
                return trial
            if not is_epoch_report(metrics):
                return super().update_trial(trial_id, dict(metrics), step=step)
            for name, value in metrics.items():
                if not trial.metrics.exists(name):
                    trial.metrics.register(name, direction="min")  # a record, not a goal
                # The history itself: MetricsTracker.update would also rank the values, and warn
                # on an all-NaN metric (auc when the model has none).
                trial.metrics.metrics[name].update(float(value), step=step)
            self._save_trial(trial)
            return trial

        @kt.synchronized
        def end_trial(self, trial: Any) -> None:
            if trial.trial_id in self.end_order:  # its worker was given up on, then came back
                return
            if trial.trial_id in self._retry_queue:  # queued by a chief restart, then finished
                self._retry_queue.remove(trial.trial_id)  # by the worker that had it all along
            self.last_heard[trial.trial_id] = time.monotonic()
            super().end_trial(trial)

        @kt.synchronized
        def give_up_silent(self, timeout_s: float) -> list[str]:
            """End as FAILED every running trial whose worker has been silent over `timeout_s`;
            their ids. The reason is the trial's message, and so its error in the trials table."""
            now, given_up = time.monotonic(), []
            for tuner_id, trial in list(self.ongoing_trials.items()):
                silent = now - self.last_heard.get(trial.trial_id, now)
                if silent <= timeout_s:
                    continue
                trial.status = "FAILED"
                trial.message = (f"worker `{tuner_id}` went silent: nothing heard for {silent:.0f} s "
                                 f"(tune.worker_timeout_s = {timeout_s:g}); trial given up")
                self.end_trial(trial)
                self.tuner_ids.discard(tuner_id)
                given_up.append(trial.trial_id)
            return given_up

        @kt.synchronized
        def search_over(self) -> bool:
            no_more = self.stop_sent or (self.max_trials and len(self.trials) >= self.max_trials)
            return bool(no_more) and not self.ongoing_trials and not self._retry_queue

        @kt.synchronized
        def failed_in_a_row(self) -> int:
            count = 0
            for trial_id in self.end_order:
                count = count + 1 if self.trials[trial_id].status == "FAILED" else 0
            return count

        def get_state(self) -> dict[str, Any]:
            return {**super().get_state(), "trial_workers": self.trial_workers}

        def set_state(self, state: dict[str, Any]) -> None:
            super().set_state(state)
            self.trial_workers = dict(state.get("trial_workers", {}))

    return ChiefOracle


def serve_search(oracle: Any, address: Address, worker_timeout_s: float, console: Console,
                 on_trial_end: Callable[[Any], None]) -> None:
    """Serve `oracle` (a ChiefOracle) at `address` until every trial has ended.

    Calls `on_trial_end(trial)` as trials end. Raises StageError when the oracle's limit of
    failed trials in a row is reached, as a local search does; the trials so far are kept.
    """
    from chimuf.stages.tune import error_line

    oracle.verbose = 0  # Keras Tuner's own trial tables; chimuf prints one line a trial
    server = start_server(oracle, address)
    console.info(f"  tuning chief listening on {address}; start workers with "
                 f"`chimuf tune-worker --chief HOST:{address.port}` (same config, profile and seed)")
    announced = set(oracle.end_order)
    try:
        while True:
            oracle.give_up_silent(worker_timeout_s)  # announced below, as any ended trial
            over = oracle.search_over()  # before announcing, so that no last trial goes unsaid
            for trial_id in [t for t in list(oracle.end_order) if t not in announced]:
                announced.add(trial_id)
                on_trial_end(oracle.trials[trial_id])
            if oracle.failure_limit and oracle.failed_in_a_row() >= oracle.failure_limit:
                last = oracle.trials[oracle.end_order[-1]]
                raise StageError(
                    f"tuning stopped: {oracle.failure_limit} trials in a row failed; the last error: "
                    f"{error_line(last.message)}. Fix the cause and rerun; finished trials are kept."
                )
            if over:
                break
            time.sleep(POLL_S)
        let_workers_stop(oracle, min(STOP_GRACE_S, worker_timeout_s))
    finally:
        server.stop(grace=1.0)


def start_server(oracle: Any, address: Address) -> Any:
    """Keras Tuner's OracleServicer on a gRPC server bound to `address` (started)."""
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    # gRPC sets SO_REUSEPORT by default, which lets a second chief share a port silently.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
                         options=[("grpc.so_reuseport", 0)])
    protos.get_service_grpc().add_OracleServicer_to_server(OracleServicer(oracle), server)
    try:
        bound = server.add_insecure_port(str(address))
    except RuntimeError:  # gRPC >= 1.60 raises where older versions returned 0
        bound = 0
    if not bound:
        raise StageError(
            f"the tuning chief cannot listen on {address}: the port is in use or {address.host} is "
            "not an address of this machine; choose another with --tune-chief HOST:PORT"
        )
    server.start()
    return server


def let_workers_stop(oracle: Any, grace_s: float) -> None:
    """Keep answering while workers come back for a trial, so each hears "stop" instead of
    waiting for a chief that is gone; dead workers do not come back, hence the grace limit."""
    deadline = time.monotonic() + grace_s
    while oracle.tuner_ids and time.monotonic() < deadline:
        time.sleep(POLL_S)


# --- 5. a worker -------------------------------------------------------------------------------


@dataclass
class WorkerSetup:
    chief: Address
    worker_id: str
    run_dir: Path  # the chief's run folder when shared, else a folder of this machine's own
    cache_dir: Path
    data_dir: Callable[[], Path]  # resolved only when the split and cache must be made here
    chief_timeout_s: float  # how long to wait for the chief, at the start and for each request


def run_worker(config: StudyConfig, setup: WorkerSetup, console: Console) -> int:
    """Run trials for the chief until it says the search is over; how many ran here.

    The worker never marks the run folder's status (the chief owns it); its own files (the
    tuner's state, each trial's best weights and history) go to `run_dir`/tune-workers/<id>/.
    It reads the run folder only once the chief serves: by then the chief's study has written
    its current settings and finished its split and cache there.
    """
    import grpc

    from chimuf.stages import tune

    wait_for_chief(setup.chief, setup.chief_timeout_s)
    console.info(f"worker {setup.worker_id}: connected to the tuning chief at {setup.chief}")
    cache, split = worker_data(config, setup, console)
    workdir = setup.run_dir / "tune-workers" / setup.worker_id
    try:
        ran = tune.work_for_chief(cache, split, config.tune, config.train, config.augment, config.seed,
                                  workdir, setup.worker_id, setup.chief, setup.chief_timeout_s, console)
    except (grpc.RpcError, ChiefLost) as exc:
        reason = str(exc) if isinstance(exc, ChiefLost) else rpc_reason(exc)
        raise StageError(
            f"worker {setup.worker_id} lost the tuning chief at {setup.chief} ({reason}). When the "
            "chief's study runs again (rerunning it resumes the search), start this worker again"
        ) from None
    console.info(f"worker {setup.worker_id}: the chief says the search is over; {ran} trials ran here")
    return ran


def wait_for_chief(chief: Address, timeout_s: float) -> None:
    import grpc

    channel = grpc.insecure_channel(str(chief))
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise StageError(
            f"no tuning chief answered at {chief} within {timeout_s:g} s; start it with `chimuf "
            f"study --tune-chief HOST:{chief.port}` (it listens once the study reaches `tune`), check "
            "the host name, port and firewall, or wait longer with --chief-timeout"
        ) from None
    finally:
        channel.close()


def rpc_reason(exc: Any) -> str:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    return f"{code.name if code else 'error'}: {details}" if details else (code.name if code else str(exc))


def worker_data(config: StudyConfig, setup: WorkerSetup,
                console: Console) -> tuple[CacheOutcome, SplitOutcome]:
    """The split and image cache the chief trains on: read from its run folder when this worker
    shares it, else made here from the same data, config and seed (the stages are deterministic)."""
    from chimuf.data.audit import audit_folder
    from chimuf.data.cache import build_cache
    from chimuf.data.split import split_dataset

    check_same_settings(config, setup.run_dir)
    found = finished_data(config, setup.run_dir, console)
    if found is not None:
        console.info(f"worker {setup.worker_id}: split and image cache from `{setup.run_dir}`")
        return found
    console.info(f"worker {setup.worker_id}: no finished split and cache for these settings in "
                 f"`{setup.run_dir}`; making them here")
    data_dir = setup.data_dir()
    audit = audit_folder(data_dir, config.audit, console, max_per_class=config.data.max_per_class,
                         seed=config.seed)
    split = split_dataset(audit, config.split, config.seed)
    cache = build_cache(audit, data_dir, config.data.image_size, setup.cache_dir, console)
    return cache, split


# The settings a trial's result depends on; a worker must share them with its chief.
TUNING_SETTINGS = ("seed", "data.image_size", "data.max_per_class", "audit.", "split.", "augment.",
                   "train.", "tune.")
NOT_TUNING_SETTINGS = ("tune.worker_timeout_s",)  # the chief's own


def check_same_settings(config: StudyConfig, run_dir: Path) -> None:
    """When `run_dir` holds the chief's results.json, this worker's settings must be the chief's."""
    saved = read_json(run_dir / "results.json")
    if saved is None or not isinstance(saved.get("run"), dict) or "config" not in saved["run"]:
        return
    chief, here = flatten(saved["run"]["config"]), flatten(as_dict(config))
    differ = [f"{key}: {chief.get(key)!r} there, {here[key]!r} here" for key in here
              if key.startswith(TUNING_SETTINGS) and key not in NOT_TUNING_SETTINGS
              and chief.get(key) != here[key]]
    if differ:
        raise ConfigError(
            f"this worker's settings differ from the run's in `{run_dir / 'results.json'}`: "
            f"{'; '.join(differ[:5])}. Start the worker with the chief's --config, --profile and "
            "--seed (`chimuf config` prints them), or give it another --out"
        )


def finished_data(config: StudyConfig, run_dir: Path,
                  console: Console) -> tuple[CacheOutcome, SplitOutcome] | None:
    """The run folder's finished split and cache, if they were made with this config's settings
    from the same audit and the cache file is still there; else None."""
    run = Run(run_dir, console)  # read only: no activate, no stage
    saved = {name: read_json(run.outcome_path(name)) for name in ("split", "cache")}
    if any(value is None for value in saved.values()):
        return None
    wanted = {"split": {"split": config.split, "seed": config.seed},
              "cache": {"image_size": config.data.image_size}}
    for name, inputs in wanted.items():
        recorded = saved[name].get("inputs", {})
        if any(recorded.get(key) != to_jsonable(value) for key, value in inputs.items()):
            return None
    if saved["split"]["inputs"].get("data") != saved["cache"]["inputs"].get("data"):
        return None  # made from different audits
    cache = from_jsonable(CacheOutcome, saved["cache"]["outcome"])
    if not Path(cache.images_path).is_file():
        return None
    return cache, from_jsonable(SplitOutcome, saved["split"]["outcome"])


# --- 6. several GPUs ---------------------------------------------------------------------------


def training_strategy() -> Any:
    """MirroredStrategy over every GPU when there are several, else TensorFlow's default strategy.

    Mirrored: each batch is split across the GPUs and the gradients summed, so a batch of
    `train.batch_size` images means the same as on one device. Models must be built and compiled
    inside `strategy.scope()` (Keras Tuner does so for a tuner given `distribution_strategy`).
    """
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    return tf.distribute.get_strategy()
