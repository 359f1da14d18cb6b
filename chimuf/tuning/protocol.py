"""The distributed search's protocol: addresses, roles, and the epoch reports workers send.

The hyperparameter search is the study's one stage made of many independent, long units (a trial
trains a model for up to `tune.epochs` epochs), so it is the stage that runs on several machines.
Keras Tuner's distributed mode does the sharing: one chief holds the oracle, workers ask it for a
trial, train it, report, and ask again, over gRPC.

    chimuf study --tune-chief HOST:PORT     the study; during `tune` it is the chief and serves the
                                            oracle (chimuf.tuning.chief) until every trial is done
    chimuf tune-worker --chief HOST:PORT    a worker (chimuf.tools.tune_worker): the chief's split
                                            and image cache, then trials until the chief says stop

Keras Tuner learns its role from three environment variables (KERASTUNER_TUNER_ID: "chief" or a
worker id; KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT); `tuner_role` sets them for the time a
tuner is built and searched, and puts the old values back.

What chimuf adds on top of Keras Tuner's protocol, whose messages stay as they are: each finished
epoch travels to the chief as an UpdateTrial with metrics named `epoch_*` (step = epoch index), so
the trial's history reaches the chief's run folder though the worker may share no file system
with it, and every epoch is a sign of life. These reports do not name the objective, so Keras
Tuner's own final report of the trial (objective at its best epoch) still comes, as in a local
search. A worker whose chief stops answering ends with one line (ChiefLost, rpc_reason), not with
a failed trial.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from chimuf.core.environment import environ_for
from chimuf.core.errors import ConfigError, StageError
from chimuf.core.results import EpochRecord

CHIEF_ID = "chief"  # Keras Tuner takes any tuner id containing "chief" for the chief
ENV_NAMES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
EPOCH_PREFIX = "epoch_"  # metrics of an epoch report; never the objective
WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


# --- addresses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    host: str  # a name or IP address; for the chief, 0.0.0.0 listens on every interface
    port: int
    secret: str = field(default="", repr=False, compare=False)  # shared by chief and workers; "": none
    # TLS, optional: the chief's certificate and key (PEM); a worker's trusted certificate (PEM)
    cert: bytes = field(default=b"", repr=False, compare=False)
    key: bytes = field(default=b"", repr=False, compare=False)
    ca: bytes = field(default=b"", repr=False, compare=False)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, flag: str, default_host: str | None = None) -> Address:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) as an Address; `flag` names the option in errors.

    With `default_host`, a bare `PORT` means that host (the chief: loopback unless told otherwise).
    """
    if default_host is not None and text.strip().isdigit():
        text = f"{default_host}:{text.strip()}"
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\w+)|([^\s:\[\]]+):(\w+)", text.strip())
    if match is None:
        raise ConfigError(f"`{flag}` must be HOST:PORT (e.g. 10.0.0.5:8470 or [::1]:8470), got {text!r}")
    host = match.group(1) or match.group(3)
    port = match.group(2) or match.group(4)
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"`{flag}` port must be a number from 1 to 65535, got {port!r} in {text!r}")
    return Address(host, int(port))


# --- the shared secret ----------------------------------------------------------------------

SECRET_ENV = "CHIMUF_TUNE_SECRET"
SECRET_HEADER = "chimuf-tune-secret"  # gRPC metadata keys are lower case
MIN_SECRET = 16  # characters: a guessable secret is no secret
MAX_SECRET_FILE = 4096  # bytes
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def load_secret(secret_file: str | None) -> str:
    """The secret chief and workers share: the first line of `secret_file`, else $CHIMUF_TUNE_SECRET,
    else "" (none). Read with a size cap, from a regular file only."""
    from chimuf.core.files import read_bounded

    if secret_file:
        try:
            data = read_bounded(Path(secret_file), MAX_SECRET_FILE, "--secret-file", ConfigError)
        except OSError as exc:
            raise ConfigError(f"`--secret-file` {secret_file} cannot be read: {exc.strerror}") from None
        text = data.decode("utf-8", "replace")
        secret, source = (text.strip().splitlines() or [""])[0].strip(), f"`--secret-file` {secret_file}"
    else:
        secret, source = os.environ.get(SECRET_ENV, "").strip(), f"${SECRET_ENV}"
        if not secret:
            return ""
    if len(secret) < MIN_SECRET or not secret.isprintable():
        raise ConfigError(f"the tuning secret from {source} must be at least {MIN_SECRET} printable "
                          f"characters, got {len(secret)}; make one with `openssl rand -hex 32`")
    return secret


def with_secret(address: Address, secret_file: str | None, flag: str) -> Address:
    """`address` with the shared secret; a chief or worker off loopback without one is refused."""
    secret = load_secret(secret_file)
    if not secret and address.host not in LOOPBACK:
        raise ConfigError(
            f"`{flag}` {address} is not a loopback address and no shared secret is set: any machine "
            f"that reaches the port could steer the search; set ${SECRET_ENV} or --secret-file on the "
            "chief and every worker (docs/distributed.md)"
        )
    return replace(address, secret=secret)


MAX_PEM = 64 * 1024  # bytes of a certificate or key file


def with_tls(address: Address, cert: str | None = None, key: str | None = None,
             ca: str | None = None) -> Address:
    """`address` with TLS files read (PEM, bounded): the chief's `cert` and `key` (both or
    neither), a worker's `ca` (the chief's certificate, or the authority that signed it)."""
    from chimuf.core.files import read_bounded

    if bool(cert) != bool(key):
        raise ConfigError("`--tls-cert` and `--tls-key` go together: give both, or neither")

    def pem(path: str | None, flag: str) -> bytes:
        if not path:
            return b""
        try:
            return read_bounded(Path(path), MAX_PEM, flag, ConfigError)
        except OSError as exc:
            raise ConfigError(f"`{flag}` {path} cannot be read: {exc.strerror}") from None

    return replace(address, cert=pem(cert, "--tls-cert"), key=pem(key, "--tls-key"), ca=pem(ca, "--tls-ca"))


def channel(address: Address) -> Any:
    """A gRPC channel to the chief at `address`: TLS when the address has a trusted certificate,
    the shared secret on every call when it has one."""
    import grpc

    target = str(address)
    if address.ca:
        plain = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=address.ca))
    else:
        plain = grpc.insecure_channel(target)
    return grpc.intercept_channel(plain, secret_interceptor(address.secret)) if address.secret else plain


def secret_interceptor(secret: str) -> Any:
    """A gRPC client interceptor that adds `secret` to every call's metadata."""
    import grpc

    class Interceptor(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            metadata = [*(details.metadata or []), (SECRET_HEADER, secret)]
            return continuation(details._replace(metadata=metadata), request)

    return Interceptor()


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


# --- roles: Keras Tuner's environment variables, set and restored ---------------------------


@contextlib.contextmanager
def tuner_role(tuner_id: str, address: Address) -> Iterator[None]:
    """Keras Tuner sees this process as `tuner_id` of the search served at `address`, inside the
    block only; whatever the three variables held before (or their absence) comes back after."""
    with environ_for(dict(zip(ENV_NAMES, (tuner_id, address.host, str(address.port)), strict=True))):
        yield


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


# --- epoch reports: a trial's history, as metrics that travel over gRPC ---------------------


def epoch_metrics(record: EpochRecord, elapsed_s: float, pruned: bool = False) -> dict[str, float]:
    """One finished epoch as an UpdateTrial's metrics: `epoch_loss`, ..., `epoch_elapsed_s`,
    `epoch_pruned` (1 when the median stopping rule ended the trial after this epoch)."""
    values = {name: float(value) for name, value in asdict(record).items() if name != "epoch"}
    extra = {"elapsed_s": elapsed_s, "pruned": float(pruned)}
    return {f"{EPOCH_PREFIX}{name}": value for name, value in {**values, **extra}.items()}


class ChiefLost(StageError):
    """A worker's request to the chief failed (the chief is gone or unreachable)."""


def report_epoch(oracle: Any, trial_id: str, record: EpochRecord, elapsed_s: float,
                 pruned: bool = False) -> None:
    """Send one finished epoch to the chief. A chief that cannot be reached ends the worker's
    search (ChiefLost), rather than failing the trial that was training well."""
    import grpc

    try:
        oracle.update_trial(trial_id, epoch_metrics(record, elapsed_s, pruned), step=record.epoch - 1)
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


def pruned_from_metrics(trial: Any) -> bool:
    """Whether the trial's worker reported that the median stopping rule ended it."""
    observations = trial.metrics.get_history(f"{EPOCH_PREFIX}pruned") if trial.metrics.exists(
        f"{EPOCH_PREFIX}pruned") else []
    return any(o.value[-1] for o in observations)


def forget_epochs(trial: Any) -> None:
    """Drop a trial's epoch reports: it starts again from its first epoch (a retry, a worker
    restarted with the same id, a local rerun), and its history with it."""
    for name in [name for name in trial.metrics.metrics if name.startswith(EPOCH_PREFIX)]:
        del trial.metrics.metrics[name]


@contextlib.contextmanager
def client_channel(address: Address) -> Iterator[None]:
    """Keras Tuner's OracleClient talks to the chief through `channel(address)` (TLS, the secret),
    inside the block.

    Keras Tuner opens its channel with `grpc.insecure_channel` in its oracle_client module; the
    module's `grpc` is swapped for one whose insecure_channel is `channel(address)`, and put back
    afterwards.
    """
    import grpc
    from keras_tuner.src.distribute import oracle_client

    if not (address.secret or address.ca):
        yield
        return

    class ChimufGrpc:
        def __getattr__(self, name: str) -> Any:
            return getattr(grpc, name)

        @staticmethod
        def insecure_channel(target: str, *args: Any, **kwargs: Any) -> Any:
            return channel(address)

    saved = oracle_client.grpc
    oracle_client.grpc = ChimufGrpc()
    try:
        yield
    finally:
        oracle_client.grpc = saved


def rpc_reason(exc: Any) -> str:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    return f"{code.name if code else 'error'}: {details}" if details else (code.name if code else str(exc))
