"""The chief of a distributed search: the oracle workers ask for trials, served over gRPC.

The chief's loop is chimuf's own (serve_search), not Keras Tuner's `start_server`, which waits
forever for a trial whose worker died. A trial whose worker has been silent for longer than
`tune.worker_timeout_s` is given back once: the next worker that asks gets it (a peer that takes
trials and never reports does not use up the budget). Silent a second time, it is ended FAILED,
with the reason; the search goes on: a worker that dies in a trial may have died of it (memory),
and a FAILED trial costs one trial of the budget, never a loop of crashing workers. A worker
restarted with the same `--id` before the timeout gets its trial back (Keras Tuner's own rule)
and trains it again.

The chief's oracle (ChiefOracle) files the workers' epoch reports (chimuf.tuning.protocol) beside
each trial's metrics, so every trial's history reaches the chief's run folder. Every call a peer
makes passes chimuf.tuning.guard first (the secret, then the message); the oracle's lock is
released whatever a call raises (guard.locked).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

from chimuf.core.console import Console
from chimuf.core.errors import StageError
from chimuf.core.results import EpochRecord
from chimuf.tuning.guard import guarded_servicer, locked
from chimuf.tuning.protocol import Address, forget_epochs, history_from_metrics, is_epoch_report
from chimuf.tuning.search import SeededBayesianOracle, error_line

POLL_S = 0.5  # how often the chief looks for silent workers and finished trials
STOP_GRACE_S = 30.0  # after the last trial, how long the chief answers workers asking for more
SERVER_THREADS = 4  # the oracle's methods hold one lock; threads only keep slow calls from queuing


class ChiefOracle(SeededBayesianOracle):
    """The search's oracle with what the chief needs: epoch reports, who runs each trial, when
    each trial's worker last spoke, and ending the trials of silent workers."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Keras Tuner raises inside end_trial, in a gRPC thread, leaving the trial half ended;
        # serve_search checks the limit itself and stops cleanly.
        self.failure_limit = self.max_consecutive_failed_trials
        self.max_consecutive_failed_trials = None
        self.last_heard: dict[str, float] = {}  # trial id -> time.monotonic() of its last call
        self.trial_workers: dict[str, str] = {}  # trial id -> worker id
        self.stop_sent = False  # a worker was told the search is over
        self.given_back: set[str] = set()  # trials taken from a silent worker and handed out again

    @locked
    def create_trial(self, tuner_id: str) -> Any:
        if self.may_come_back(tuner_id):  # the budget is handed out, but a trial may be given back
            from keras_tuner.src.engine import trial as trial_module

            return trial_module.Trial(self.get_space(), status="IDLE")  # Keras Tuner: ask again
        trial = super().create_trial(tuner_id)
        if trial.status == "RUNNING":
            forget_epochs(trial)
            self.last_heard[trial.trial_id] = time.monotonic()
            self.trial_workers[trial.trial_id] = tuner_id
        elif trial.status == "STOPPED":
            self.stop_sent = True
        return trial

    @locked
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

    @locked
    def end_trial(self, trial: Any) -> None:
        if trial.trial_id in self.end_order:  # its worker was given up on, then came back
            return
        if trial.trial_id in self._retry_queue:  # queued by a chief restart, then finished
            self._retry_queue.remove(trial.trial_id)  # by the worker that had it all along
        self.last_heard[trial.trial_id] = time.monotonic()
        super().end_trial(trial)

    @locked
    def give_up_silent(self, timeout_s: float, say: Callable[[str], None] = lambda line: None) -> list[str]:
        """Every running trial whose worker has been silent over `timeout_s`: given back to the
        next worker the first time, ended FAILED the second; the ids of those ended. The reason is
        the trial's message, and so its error in the trials table."""
        now, given_up = time.monotonic(), []
        for tuner_id, trial in list(self.ongoing_trials.items()):
            silent = now - self.last_heard.get(trial.trial_id, now)
            if silent <= timeout_s:
                continue
            self.tuner_ids.discard(tuner_id)
            if trial.trial_id not in self.given_back:
                self.given_back.add(trial.trial_id)
                del self.ongoing_trials[tuner_id]
                trial.status = "IDLE"
                forget_epochs(trial)
                self._retry_queue.append(trial.trial_id)
                say(f"  trial {int(trial.trial_id) + 1}: worker `{tuner_id}` silent for {silent:.0f} s "
                    f"(tune.worker_timeout_s = {timeout_s:g}); the trial goes to the next worker")
                continue
            trial.status = "FAILED"
            trial.message = (f"worker `{tuner_id}` went silent: nothing heard for {silent:.0f} s "
                             f"(tune.worker_timeout_s = {timeout_s:g}); trial given up")
            self.end_trial(trial)
            given_up.append(trial.trial_id)
        return given_up

    def may_come_back(self, tuner_id: str) -> bool:
        """Whether `tuner_id`, asking for a trial once all are handed out, should wait rather than
        stop: another worker's running trial has not been given back yet and may be."""
        budget_spent = bool(self.max_trials) and len(self.trials) >= self.max_trials
        others = [t for worker, t in self.ongoing_trials.items() if worker != tuner_id]
        return (budget_spent and tuner_id not in self.ongoing_trials and not self._retry_queue
                and any(t.trial_id not in self.given_back for t in others))

    @locked
    def search_over(self) -> bool:
        no_more = self.stop_sent or (self.max_trials and len(self.trials) >= self.max_trials)
        return bool(no_more) and not self.ongoing_trials and not self._retry_queue

    @locked
    def running_histories(self) -> dict[str, tuple[Any, list[EpochRecord]]]:
        """trial id → (trial, the epochs its worker reported) of every running trial."""
        return {trial.trial_id: (trial, history_from_metrics(trial)[0])
                for trial in self.ongoing_trials.values()}

    @locked
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


def serve_search(oracle: Any, address: Address, worker_timeout_s: float, console: Console,
                 on_trial_end: Callable[[Any], None],
                 on_epoch: Callable[[Any, EpochRecord], None] = lambda trial, record: None) -> None:
    """Serve `oracle` (a ChiefOracle) at `address` until every trial has ended.

    Calls `on_epoch(trial, record)` as workers report epochs and `on_trial_end(trial)` as trials
    end. Raises StageError when the oracle's limit of failed trials in a row is reached, as a local
    search does; the trials so far are kept.
    """
    oracle.verbose = 0  # Keras Tuner's own trial tables; chimuf prints one line a trial
    server = start_server(oracle, address, console.warn)
    console.info(f"  tuning chief listening on {address}; start workers with "
                 f"`chimuf tune-worker --chief HOST:{address.port}` (same config, profile and seed)")
    announced = set(oracle.end_order)
    epochs_said: dict[str, int] = {}  # trial id → epochs of it said so far
    try:
        while True:
            for trial_id, (trial, history) in oracle.running_histories().items():
                for record in history[epochs_said.get(trial_id, 0):]:
                    on_epoch(trial, record)
                epochs_said[trial_id] = len(history)
            oracle.give_up_silent(worker_timeout_s, console.warn)  # ended: announced below
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


def start_server(oracle: Any, address: Address, log: Callable[[str], None] = lambda line: None) -> Any:
    """Keras Tuner's OracleServicer, each call checked (chimuf.tuning.guard), on a gRPC server bound
    to `address` (started); refused calls are said through `log`, with the peer's address."""
    import grpc
    from keras_tuner.src import protos

    # gRPC sets SO_REUSEPORT by default, which lets a second chief share a port silently.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS),
                         options=[("grpc.so_reuseport", 0)])
    servicer = guarded_servicer(oracle, address.secret, log)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        if address.cert:  # TLS (protocol.with_tls)
            bound = server.add_secure_port(str(address), grpc.ssl_server_credentials([(address.key,
                                                                                     address.cert)]))
        else:
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
