"""The tuning chief facing a hostile peer, on loopback: every message checked before Keras Tuner sees
it, every failure answered as an error to that peer (never a hang), the shared secret on every call."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from chimuf.core.config import TuneConfig
from chimuf.core.errors import ConfigError, StageError
from chimuf.tuning import protocol
from chimuf.tuning.protocol import Address
from tests.test_distributed import chief_oracle, free_port

SECRET = "s3cret-shared-by-chief-and-workers"
CALL_S = 60.0  # every call answers within this even on a loaded machine; a hang fails the test instead


@pytest.fixture
def chief():
    """A ChiefOracle served on loopback with a secret; its server stops after the test."""
    from chimuf.tuning.chief import start_server

    oracle = chief_oracle(max_trials=3)
    said: list[str] = []
    address = Address("127.0.0.1", free_port(), secret=SECRET)
    server = start_server(oracle, address, said.append)
    yield oracle, address, said
    server.stop(grace=None)


def stub(address: Address):
    import grpc
    from keras_tuner.src import protos

    return protos.get_service_grpc().OracleStub(grpc.insecure_channel(str(address)))


def call(address: Address, method: str, request, secret: str | None = SECRET):
    metadata = [(protocol.SECRET_HEADER, secret)] if secret is not None else []
    return getattr(stub(address), method)(request, timeout=CALL_S, metadata=metadata)


def service():
    from keras_tuner.src import protos

    return protos.get_service()


def create(address: Address, tuner_id: str = "w1"):
    from keras_tuner.src.engine import trial as trial_module

    response = call(address, "CreateTrial", service().CreateTrialRequest(tuner_id=tuner_id))
    return trial_module.Trial.from_proto(response.trial)


def refused(address: Address, method: str, request, secret: str | None = SECRET):
    import grpc

    with pytest.raises(grpc.RpcError) as caught:
        call(address, method, request, secret)
    return caught.value


def test_an_unknown_trial_id_is_refused_and_the_chief_keeps_answering(chief):
    import grpc

    _, address, said = chief
    error = refused(address, "UpdateTrial", service().UpdateTrialRequest(
        trial_id="999", metrics={"val_accuracy": 0.5}, step=0))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "never handed out" in error.details()
    trial = create(address)  # the lock was not left held: the next call is answered
    assert trial.status == "RUNNING"
    assert any("127.0.0.1" in line and "never handed out" in line for line in said)


def test_an_exception_inside_the_oracle_releases_its_lock():
    oracle = chief_oracle()
    with pytest.raises(KeyError):
        oracle.update_trial("999", {"val_accuracy": 0.5})  # Keras Tuner's own lookup fails
    done = threading.Event()
    threading.Thread(target=lambda: (oracle.create_trial("w2"), done.set()), daemon=True).start()
    assert done.wait(CALL_S), "the oracle's lock stayed held after an exception"


@pytest.mark.parametrize("units", [65_536, 0, 10**8])
def test_end_trial_with_values_outside_the_space_is_refused(chief, units):
    oracle, address, _ = chief
    trial = create(address)
    trial.hyperparameters.values["units"] = units
    trial.status = "COMPLETED"
    error = refused(address, "EndTrial", service().EndTrialRequest(trial=trial.to_proto()))
    assert "outside the search space" in error.details()
    assert oracle.trials[trial.trial_id].status == "RUNNING"
    assert oracle.trials[trial.trial_id].hyperparameters.values["units"] != units


def test_end_trial_with_other_values_than_handed_out_is_refused(chief):
    oracle, address, _ = chief
    trial = create(address)
    handed = trial.hyperparameters.values["units"]
    trial.hyperparameters.values["units"] = 1 if handed != 1 else 2
    trial.status = "COMPLETED"
    error = refused(address, "EndTrial", service().EndTrialRequest(trial=trial.to_proto()))
    assert "other hyperparameters than the chief handed out" in error.details()
    assert oracle.trials[trial.trial_id].hyperparameters.values["units"] == handed


@pytest.mark.parametrize("score", [math.inf, -math.inf, 1.5, -0.1, math.nan])
def test_a_score_that_is_not_finite_or_out_of_range_never_reaches_the_oracle(chief, score):
    oracle, address, _ = chief
    trial = create(address)
    error = refused(address, "UpdateTrial", service().UpdateTrialRequest(
        trial_id=trial.trial_id, metrics={"val_accuracy": score}, step=0))
    assert "val_accuracy" in error.details()
    assert not oracle.trials[trial.trial_id].metrics.exists("val_accuracy")
    call(address, "UpdateTrial", service().UpdateTrialRequest(  # a genuine report still passes
        trial_id=trial.trial_id, metrics={"val_accuracy": 0.75}, step=0))
    trial.status = "COMPLETED"
    call(address, "EndTrial", service().EndTrialRequest(trial=trial.to_proto()))
    assert oracle.trials[trial.trial_id].score == 0.75


def test_unknown_metric_names_are_refused(chief):
    _, address, _ = chief
    trial = create(address)
    error = refused(address, "UpdateTrial", service().UpdateTrialRequest(
        trial_id=trial.trial_id, metrics={"epoch_" + "x" * 500: 1.0}, step=0))
    assert "unknown metric" in error.details()


def test_update_space_cannot_add_a_hyperparameter(chief):
    import keras_tuner as kt

    oracle, address, _ = chief
    hps = kt.HyperParameters()
    hps.Int("units", 1, 50)  # the chief's own: accepted
    call(address, "UpdateSpace", service().UpdateSpaceRequest(hyperparameters=hps.to_proto()))
    hps.Int("filters", 1, 65_536)
    error = refused(address, "UpdateSpace", service().UpdateSpaceRequest(hyperparameters=hps.to_proto()))
    assert "'filters', not in the chief's search space" in error.details()
    wider = kt.HyperParameters()
    wider.Int("units", 1, 10**8)
    refused(address, "UpdateSpace", service().UpdateSpaceRequest(hyperparameters=wider.to_proto()))
    assert [hp.name for hp in oracle.hyperparameters.space] == ["units"]
    assert oracle.hyperparameters.space[0].max_value == 50


def test_a_worker_id_that_reads_as_the_chief_is_refused(chief):
    _, address, _ = chief
    error = refused(address, "CreateTrial", service().CreateTrialRequest(tuner_id="chief"))
    assert "must not contain 'chief'" in error.details()


def test_a_call_without_the_secret_is_refused_and_logged_with_the_peer(chief):
    import grpc

    oracle, address, said = chief
    for secret in (None, "wrong-secret-of-the-same-length!!"):
        error = refused(address, "CreateTrial", service().CreateTrialRequest(tuner_id="w9"), secret)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "CHIMUF_TUNE_SECRET" in error.details()
    assert not oracle.trials
    assert len([line for line in said if "wrong or missing secret" in line and "127.0.0.1" in line]) == 1
    assert create(address, "w9").status == "RUNNING"


def test_keras_tuners_client_sends_the_secret_inside_client_channel(chief, monkeypatch):
    import grpc
    from keras_tuner.src.distribute import oracle_client

    _, address, _ = chief
    with protocol.tuner_role("w1", address), protocol.client_timeout(CALL_S):
        with protocol.client_channel(address):
            space = oracle_client.OracleClient(chief_oracle()).get_space()
            assert [hp.name for hp in space.space] == ["units"]
        with pytest.raises(grpc.RpcError):  # the module's own grpc is back: no secret
            oracle_client.OracleClient(chief_oracle()).get_space()


def test_a_silent_peers_trial_is_given_back_once_then_failed():
    oracle = chief_oracle(max_trials=1)
    taken = oracle.create_trial("greedy")
    assert oracle.create_trial("honest").status == "IDLE"  # budget handed out: wait, do not stop
    oracle.last_heard[taken.trial_id] -= 100
    said: list[str] = []
    assert oracle.give_up_silent(timeout_s=50, say=said.append) == []  # given back, not failed
    assert "goes to the next worker" in said[0]
    again = oracle.create_trial("honest")
    assert again.trial_id == taken.trial_id and again.status == "RUNNING"
    assert oracle.trial_workers[again.trial_id] == "honest"
    assert not oracle.search_over()
    oracle.last_heard[again.trial_id] -= 100
    assert oracle.create_trial("late").status == "STOPPED"  # given back once: it cannot come back
    assert oracle.give_up_silent(timeout_s=50) == [again.trial_id]  # silent twice: failed
    assert oracle.trials[again.trial_id].status == "FAILED"
    assert oracle.search_over()


# --- addresses, secret, and the worker's own check ------------------------------------------


def test_a_bare_port_for_the_chief_means_loopback():
    loopback = protocol.parse_address("8470", "--tune-chief", default_host="127.0.0.1")
    assert loopback == Address("127.0.0.1", 8470)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        protocol.parse_address("8470", "--chief")  # a worker must name its chief


def test_a_chief_beyond_loopback_needs_a_secret(monkeypatch, tmp_path):
    monkeypatch.delenv(protocol.SECRET_ENV, raising=False)
    with pytest.raises(ConfigError, match="not a loopback address and no shared secret"):
        protocol.with_secret(Address("0.0.0.0", 8470), None, "--tune-chief")
    assert protocol.with_secret(Address("127.0.0.1", 8470), None, "--tune-chief").secret == ""
    monkeypatch.setenv(protocol.SECRET_ENV, SECRET)
    assert protocol.with_secret(Address("0.0.0.0", 8470), None, "--tune-chief").secret == SECRET
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-the-file-0123456789\n")
    assert protocol.load_secret(str(secret_file)) == "from-the-file-0123456789"  # the file wins
    assert SECRET not in repr(Address("h", 1, SECRET))
    monkeypatch.setenv(protocol.SECRET_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16 printable characters"):
        protocol.load_secret(None)


def test_a_secret_file_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    import os

    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is a FIFO"):
        protocol.load_secret(str(fifo))


def test_a_worker_refuses_values_outside_its_space():
    import keras_tuner as kt

    from chimuf.tuning.space import declare_space

    cfg = TuneConfig()
    hp = kt.HyperParameters()
    declare_space(hp, cfg)  # the defaults: inside
    hp.values["conv1_filters"] = 65_536
    with pytest.raises(StageError, match="conv1_filters = 65536, outside this worker's search space"):
        declare_space(hp, cfg)


def test_honest_workers_calling_at_once_finish_the_search_through_the_guard():
    """Two peers speaking Keras Tuner's protocol as chimuf's workers do, concurrently, over the
    real six-dimensional space: every message passes the guard and the search ends (no hang)."""
    import keras_tuner as kt

    from chimuf.core.results import EpochRecord
    from chimuf.tuning.chief import ChiefOracle, start_server
    from chimuf.tuning.space import declare_space

    oracle = ChiefOracle(objective=kt.Objective("val_accuracy", direction="max"), max_trials=6,
                         num_initial_points=2, seed=1, max_consecutive_failed_trials=3)
    declare_space(oracle.hyperparameters, TuneConfig())
    oracle._set_project_dir(None, None)
    oracle._save_trial = lambda trial: None
    oracle.save = lambda: None
    oracle.verbose = 0
    address = Address("127.0.0.1", free_port())
    server = start_server(oracle, address)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        from keras_tuner.src.engine import trial as trial_module

        try:
            space = kt.HyperParameters()
            declare_space(space, TuneConfig())
            call(address, "UpdateSpace", service().UpdateSpaceRequest(hyperparameters=space.to_proto()),
                 None)
            while True:
                response = call(address, "CreateTrial", service().CreateTrialRequest(tuner_id=name), None)
                trial = trial_module.Trial.from_proto(response.trial)
                if trial.status == "STOPPED":
                    return
                if trial.status == "IDLE":  # as Keras Tuner's search loop: ask again
                    continue
                for epoch in range(2):
                    record = EpochRecord(epoch + 1, loss=0.6, accuracy=0.7, val_loss=0.6,
                                         val_accuracy=0.7)
                    metrics = protocol.epoch_metrics(record, 1.0)
                    call(address, "UpdateTrial", service().UpdateTrialRequest(
                        trial_id=trial.trial_id, metrics=metrics, step=epoch), None)
                final = {"loss": 0.6, "accuracy": 0.7, "val_loss": 0.6,
                         "val_accuracy": 0.5 + int(trial.trial_id) / 20}
                call(address, "UpdateTrial", service().UpdateTrialRequest(
                    trial_id=trial.trial_id, metrics=final, step=1), None)
                call(address, "GetBestTrials", service().GetBestTrialsRequest(num_trials=6), None)
                trial.status = "COMPLETED"
                call(address, "EndTrial", service().EndTrialRequest(trial=trial.to_proto()), None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",), daemon=True) for i in (1, 2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads), "a worker hung"
        assert not errors, errors
        assert oracle.search_over()
        assert sorted(t.status for t in oracle.trials.values()) == ["COMPLETED"] * 6
    finally:
        server.stop(grace=None)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chimuf chief")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (folder / "chief.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "chief.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return folder / "chief.pem", folder / "chief.key"


def test_tls_is_an_option_and_a_plain_client_is_not_answered(tmp_path):
    import grpc

    from chimuf.tuning.chief import start_server

    cert, key = self_signed(tmp_path)
    port = free_port()
    served = protocol.with_tls(Address("127.0.0.1", port, secret=SECRET), cert=str(cert), key=str(key))
    server = start_server(chief_oracle(), served)
    try:
        worker = protocol.with_tls(Address("127.0.0.1", port, secret=SECRET), ca=str(cert))
        stub = service_stub(protocol.channel(worker))
        assert stub.GetSpace(service().GetSpaceRequest(), timeout=CALL_S).hyperparameters is not None
        plain = service_stub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        with pytest.raises(grpc.RpcError):
            plain.GetSpace(service().GetSpaceRequest(), timeout=5,
                           metadata=[(protocol.SECRET_HEADER, SECRET)])
    finally:
        server.stop(grace=None)
    with pytest.raises(ConfigError, match="go together"):
        protocol.with_tls(Address("127.0.0.1", port), cert=str(cert))


def service_stub(grpc_channel):
    from keras_tuner.src import protos

    return protos.get_service_grpc().OracleStub(grpc_channel)
