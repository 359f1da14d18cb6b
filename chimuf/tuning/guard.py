"""The chief's door: every message a peer sends is checked before Keras Tuner sees it.

Keras Tuner's OracleServicer hands each gRPC request to the oracle as it comes. A peer can then
name a trial the chief never handed out (a KeyError inside Keras Tuner's `synchronized`, which
never releases its lock: the chief hangs for good), report hyperparameters outside the search
space, an infinite score, or declare new hyperparameters. GuardedServicer answers each call only
after:

    the shared secret (gRPC metadata `chimuf-tune-secret`), when the chief has one
    → the message: known trial ids only, values inside the declared space and equal to those the
      chief handed out, finite metrics within their range, no new names, a valid worker id
    → the oracle, whose lock is released whatever it raises (release_lock)

A refused or failing call is answered as an error to that peer, in one line; the chief goes on.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from chimuf.core.errors import ChimufError
from chimuf.tuning.protocol import EPOCH_PREFIX, SECRET_ENV, SECRET_HEADER, check_worker_id

# Metrics a worker may report: Keras' logs of chimuf's trials, and the epoch reports.
RATIO_METRICS = ("accuracy", "auc", "val_accuracy", "val_auc")  # within [0, 1]
LOSS_METRICS = ("loss", "val_loss", "learning_rate")
EPOCH_FIELDS = ("loss", "accuracy", "val_loss", "val_accuracy", "auc", "val_auc", "wall_s",
                "images_per_s", "learning_rate", "elapsed_s", "pruned")
MAX_METRICS = 64  # names in one report
MAX_STEP = 100_000  # epochs: config's bound on tune.epochs is far below
MAX_MESSAGE = 4000  # characters of a trial's error message kept
MAX_VALUE = 1e12  # losses, seconds, images/s: finite and below this
END_STATUSES = ("COMPLETED", "FAILED", "INVALID")
IDLE_WAIT_S = 1.0  # a worker told to wait (no trial free yet) asks again after this


class Refused(ChimufError):
    """A peer's message the chief does not pass on to Keras Tuner."""


# --- the lock --------------------------------------------------------------------------------


def release_lock(oracle: Any) -> None:
    """Release Keras Tuner's `synchronized` lock of `oracle` if this thread still holds it: its
    decorator releases only when the method returns (keras-tuner issue #915)."""
    from keras_tuner.src.engine import oracle as kt_oracle

    if kt_oracle.THREADS[oracle] == threading.current_thread().name:
        kt_oracle.THREADS[oracle] = None
        kt_oracle.LOCKS[oracle].release()


def locked(method: Callable[..., Any]) -> Callable[..., Any]:
    """Keras Tuner's `synchronized`, released whatever the method raises."""
    import functools

    from keras_tuner.src.engine import oracle as kt_oracle

    @functools.wraps(method)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        name = threading.current_thread().name
        if kt_oracle.THREADS[self] == name:  # already inside a locked call of this thread
            return method(self, *args, **kwargs)
        kt_oracle.LOCKS[self].acquire()
        kt_oracle.THREADS[self] = name
        try:
            return method(self, *args, **kwargs)
        finally:
            kt_oracle.THREADS[self] = None
            kt_oracle.LOCKS[self].release()

    return wrapped


# --- the checks ------------------------------------------------------------------------------


def check_metrics(metrics: Any, objective: str) -> dict[str, float]:
    """A report's metrics: known names, finite values within their range (NaN allowed but for the
    objective: Keras' auc of a model without one)."""
    if len(metrics) > MAX_METRICS:
        raise Refused(f"{len(metrics)} metrics in one report, more than {MAX_METRICS}")
    checked = {}
    for name, value in metrics.items():
        base = name[len(EPOCH_PREFIX):] if name.startswith(EPOCH_PREFIX) else name
        known = EPOCH_FIELDS if name.startswith(EPOCH_PREFIX) else (*RATIO_METRICS, *LOSS_METRICS)
        if base not in known:
            raise Refused(f"unknown metric {name[:80]!r}")
        value = float(value)
        if math.isnan(value) and name != objective:
            checked[name] = value
            continue
        low, high = (0.0, 1.0) if base in RATIO_METRICS or base == "pruned" else (-MAX_VALUE, MAX_VALUE)
        if not (math.isfinite(value) and low <= value <= high):
            raise Refused(f"metric {name} = {value!r} is not a finite number within [{low:g}, {high:g}]")
        checked[name] = value
    return checked


def check_values(values: dict[str, Any], space: Any) -> None:
    """Every value a declared hyperparameter may take, and no other name."""
    declared = {hp.name: hp for hp in space.space}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise Refused(f"hyperparameters not in the search space: {', '.join(n[:40] for n in unknown[:5])}")
    for name, value in values.items():
        if not allowed(declared[name], value):
            raise Refused(f"hyperparameter {name} = {str(value)[:40]} is outside the search space")


def allowed(hp: Any, value: Any) -> bool:
    """Whether `value` is one `hp` (a Keras Tuner Int or Choice) may take."""
    kind = type(hp).__name__
    if kind == "Choice":
        return any(type(value) is type(v) and value == v for v in hp.values)
    if kind == "Int":
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        step = hp.step or 1
        return hp.min_value <= value <= hp.max_value and (value - hp.min_value) % step == 0
    return False  # chimuf's space has no other kind


def check_space(incoming: Any, space: Any) -> None:
    """An UpdateSpace may only repeat what the chief declared (the same model family). The chief's
    space is compared as it travels (through its proto), as the peer's came."""
    declared = {hp.name: hp.get_config() for hp in type(space).from_proto(space.to_proto()).space}
    for hp in incoming.space:
        if hp.name not in declared:
            raise Refused(f"UpdateSpace declares {hp.name[:40]!r}, not in the chief's search space")
        if hp.get_config() != declared[hp.name]:
            raise Refused(f"UpdateSpace declares {hp.name} other than the chief's search space does")


def known_trial(oracle: Any, trial_id: str) -> Any:
    if trial_id not in oracle.trials:
        raise Refused(f"trial {trial_id[:40]!r} was never handed out by this chief")
    return oracle.trials[trial_id]


def ended_trial(oracle: Any, incoming: Any) -> Any:
    """The trial an EndTrial reports, as the oracle may take it: the chief's own hyperparameters
    (the same values, checked), the status, and a message of bounded length."""
    trial = known_trial(oracle, incoming.trial_id)
    if incoming.status not in END_STATUSES:
        raise Refused(f"EndTrial with status {str(incoming.status)[:20]!r}; expected one of "
                      f"{', '.join(END_STATUSES)}")
    values = dict(incoming.hyperparameters.values)
    check_values(values, oracle.hyperparameters)
    if values != dict(trial.hyperparameters.values):
        raise Refused(f"EndTrial of trial {trial.trial_id} with other hyperparameters than the chief "
                      "handed out")
    incoming.hyperparameters = trial.hyperparameters.copy()
    incoming.message = None if incoming.message is None else str(incoming.message)[:MAX_MESSAGE]
    return incoming


# --- the servicer ----------------------------------------------------------------------------


def guarded_servicer(oracle: Any, secret: str, log: Callable[[str], None]) -> Any:
    """Keras Tuner's OracleServicer for `oracle`, each call checked first (module docstring)."""
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer
    from keras_tuner.src.engine import hyperparameters as hp_module
    from keras_tuner.src.engine import trial as trial_module

    service = protos.get_service()
    said: set[str] = set()

    def answer(call: Callable[[Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
        def method(self: Any, request: Any, context: Any) -> Any:
            peer = context.peer()
            if secret and not authentic(context.invocation_metadata(), secret):
                if peer not in said:  # once a peer: a flood does not fill the log
                    said.add(peer)
                    log(f"tuning chief: refused {call.__name__} from {peer}: wrong or missing secret")
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              f"wrong or missing tuning secret: set ${SECRET_ENV} or --secret-file "
                              "to the chief's")
            try:
                return call(self, request)
            except (Refused, ChimufError) as exc:
                release_lock(self.oracle)
                log(f"tuning chief: refused {call.__name__} from {peer}: {exc}")
                reason, code = str(exc), grpc.StatusCode.INVALID_ARGUMENT
            except Exception as exc:  # noqa: BLE001 - whatever Keras Tuner raised: never a hang
                release_lock(self.oracle)
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                log(f"tuning chief: {call.__name__} from {peer} failed: {reason}")
                code = grpc.StatusCode.INTERNAL
            context.abort(code, reason)

        method.__name__ = call.__name__
        return method

    class GuardedServicer(OracleServicer):
        @answer
        def GetSpace(self, request: Any) -> Any:
            return service.GetSpaceResponse(hyperparameters=self.oracle.get_space().to_proto())

        @answer
        def UpdateSpace(self, request: Any) -> Any:
            check_space(hp_module.HyperParameters.from_proto(request.hyperparameters),
                        self.oracle.hyperparameters)  # nothing new: the oracle has it all
            return service.UpdateSpaceResponse()

        @answer
        def CreateTrial(self, request: Any) -> Any:
            tuner_id = check_worker_id(request.tuner_id)
            trial = self.oracle.create_trial(tuner_id)
            if trial.status == trial_module.TrialStatus.STOPPED:
                self.stop_triggered = True
            elif trial.status == trial_module.TrialStatus.IDLE:
                time.sleep(IDLE_WAIT_S)  # outside the lock: the worker asks again at once
            return service.CreateTrialResponse(trial=trial.to_proto())

        @answer
        def UpdateTrial(self, request: Any) -> Any:
            known_trial(self.oracle, request.trial_id)
            if not 0 <= request.step <= MAX_STEP:
                raise Refused(f"step {request.step} outside [0, {MAX_STEP}]")
            metrics = check_metrics(request.metrics, self.oracle.objective.name)
            trial = self.oracle.update_trial(request.trial_id, metrics, step=request.step)
            return service.UpdateTrialResponse(trial=trial.to_proto())

        @answer
        def EndTrial(self, request: Any) -> Any:
            self.oracle.end_trial(ended_trial(self.oracle, trial_module.Trial.from_proto(request.trial)))
            return service.EndTrialResponse()

        @answer
        def GetTrial(self, request: Any) -> Any:
            trial = known_trial(self.oracle, request.trial_id)
            return service.GetTrialResponse(trial=trial.to_proto())

        @answer
        def GetBestTrials(self, request: Any) -> Any:
            count = max(0, min(int(request.num_trials), int(self.oracle.max_trials or 1)))
            trials = self.oracle.get_best_trials(count)
            return service.GetBestTrialsResponse(trials=[trial.to_proto() for trial in trials])

    return GuardedServicer(oracle)


def authentic(metadata: Any, secret: str) -> bool:
    given = [value for key, value in (metadata or ()) if key == SECRET_HEADER]
    return len(given) == 1 and isinstance(given[0], str) and hmac.compare_digest(
        given[0].encode(), secret.encode())
