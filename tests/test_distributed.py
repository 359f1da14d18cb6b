"""Tuning on several machines: addresses, Keras Tuner's roles, the chief's oracle, and a chief with
workers as separate processes on the loopback interface."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chimuf.cli import main
from chimuf.core.config import StudyConfig, TuneConfig, as_dict
from chimuf.core.errors import ConfigError, StageError
from chimuf.core.results import EpochRecord
from chimuf.ml.architectures import models
from chimuf.tools import tune_worker
from chimuf.tuning import protocol
from chimuf.tuning.protocol import Address, parse_address, tuner_role
from tests.conftest import make_dataset

MAX_TRIALS = 4
TINY_CONFIG = f"""
profile = "smoke"
seed = 3
[data]
image_size = 16
[audit]
min_side = 8
[train]
models = [1]
epochs = 1
batch_size = 8
start_from_epoch = 0
patience = 1
precision = "float32"
[tune]
max_trials = {MAX_TRIALS}
epochs = 2
conv1_filters = [2, 4, 2]
conv2_filters = [2, 4, 2]
conv3_filters = [2, 4, 2]
dense_units = [4, 8, 4]
dropout_conv = [0.0, 0.2, 0.1]
dropout_dense = [0.0, 0.2, 0.1]
"""


# --- addresses and ids -------------------------------------------------------------------------


def test_address_is_host_and_port_and_ipv6_goes_in_brackets():
    assert parse_address("10.0.0.5:8470", "--chief") == Address("10.0.0.5", 8470)
    assert parse_address("gpu-node.lab:9000", "--chief") == Address("gpu-node.lab", 9000)
    assert parse_address("[::1]:8470", "--chief") == Address("::1", 8470)
    assert str(Address("::1", 8470)) == "[::1]:8470"
    assert str(Address("127.0.0.1", 1)) == "127.0.0.1:1"


@pytest.mark.parametrize("text, complaint", [
    ("localhost", "HOST:PORT"),
    (":8470", "HOST:PORT"),
    ("a:b:8470", "HOST:PORT"),
    ("localhost:http", "must be a number"),
    ("localhost:0", "must be a number from 1 to 65535"),
    ("localhost:70000", "must be a number from 1 to 65535"),
])
def test_bad_address_names_the_option_and_what_is_wrong(text, complaint):
    with pytest.raises(ConfigError, match=complaint) as caught:
        parse_address(text, "--tune-chief")
    assert "`--tune-chief`" in str(caught.value)


def test_worker_id_that_keras_tuner_would_take_for_the_chief_is_refused():
    with pytest.raises(ConfigError, match="must not contain 'chief'"):
        protocol.check_worker_id("sub-chief-2")
    with pytest.raises(ConfigError, match="letters, digits"):
        protocol.check_worker_id("../escape")
    assert protocol.check_worker_id(protocol.default_worker_id())


# --- Keras Tuner's environment variables -------------------------------------------------------


def test_tuner_role_sets_the_variables_inside_and_restores_them_after(monkeypatch):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "someone-elses")
    monkeypatch.delenv("KERASTUNER_ORACLE_IP", raising=False)
    monkeypatch.delenv("KERASTUNER_ORACLE_PORT", raising=False)
    with tuner_role("worker-a", Address("10.1.2.3", 8470)):
        assert os.environ["KERASTUNER_TUNER_ID"] == "worker-a"
        assert os.environ["KERASTUNER_ORACLE_IP"] == "10.1.2.3"
        assert os.environ["KERASTUNER_ORACLE_PORT"] == "8470"
    assert os.environ["KERASTUNER_TUNER_ID"] == "someone-elses"
    assert "KERASTUNER_ORACLE_IP" not in os.environ
    assert "KERASTUNER_ORACLE_PORT" not in os.environ


def test_tuner_role_restores_the_variables_when_the_block_raises(monkeypatch):
    for name in protocol.ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="boom"), tuner_role("chief", Address("0.0.0.0", 8470)):
        raise RuntimeError("boom")
    assert not [name for name in protocol.ENV_NAMES if name in os.environ]


# --- settings the worker shares with the chief -------------------------------------------------


def test_worker_timeout_is_left_out_of_the_tuning_fingerprint():
    from chimuf.core.engine import fingerprinted

    short, long = TuneConfig(worker_timeout_s=60.0), TuneConfig(worker_timeout_s=7200.0)
    assert fingerprinted({"tune": short}) == fingerprinted({"tune": long})
    assert fingerprinted({"tune": TuneConfig(epochs=3)}) != fingerprinted({"tune": TuneConfig(epochs=4)})


def test_worker_with_other_settings_than_the_chief_run_is_refused(tmp_path):
    chief = StudyConfig()
    (tmp_path / "results.json").write_text(json.dumps({"run": {"config": as_dict(chief)}}))
    tune_worker.check_same_settings(StudyConfig(), tmp_path)  # the same: accepted
    other = StudyConfig(tune=TuneConfig(epochs=3, worker_timeout_s=10.0))
    with pytest.raises(ConfigError, match=rf"tune\.epochs: {TuneConfig().epochs} there, 3 here") as caught:
        tune_worker.check_same_settings(other, tmp_path)
    assert "worker_timeout_s" not in str(caught.value)  # the chief's own setting


# --- epoch reports and the chief's oracle ------------------------------------------------------


def chief_oracle(max_trials: int = 3):
    """A ChiefOracle over a one-dimensional space, as the chief would hold it."""
    import keras_tuner as kt

    from chimuf.tuning.chief import ChiefOracle

    oracle = ChiefOracle(
        objective=kt.Objective("val_accuracy", direction="max"), max_trials=max_trials,
        num_initial_points=2, seed=1, max_consecutive_failed_trials=3)
    oracle.hyperparameters.Int("units", 1, 50)
    oracle._set_project_dir(None, None)
    oracle._save_trial = lambda trial: None  # no files: the state in memory is what is tested
    oracle.save = lambda: None
    oracle.verbose = 0
    return oracle


def test_epoch_reports_become_the_trial_history_on_the_chief():
    oracle = chief_oracle()
    trial = oracle.create_trial("w1")
    for epoch, val_loss in enumerate([0.9, 0.7]):
        record = EpochRecord(epoch + 1, loss=1.0 - epoch / 10, accuracy=0.5, val_loss=val_loss,
                             val_accuracy=0.6, wall_s=2.0)
        oracle.update_trial(trial.trial_id, protocol.epoch_metrics(record, 2.0 * (epoch + 1)), step=epoch)
    history, wall_s = protocol.history_from_metrics(oracle.trials[trial.trial_id])
    assert [(r.epoch, r.val_loss, r.wall_s) for r in history] == [(1, 0.9, 2.0), (2, 0.7, 2.0)]
    assert wall_s == 4.0
    # The epoch reports do not name the objective: Keras Tuner still expects the trial's result.
    assert not oracle.trials[trial.trial_id].metrics.exists("val_accuracy")


def test_a_trial_that_reported_no_epoch_has_an_empty_history():
    oracle = chief_oracle()
    trial = oracle.create_trial("w1")
    assert protocol.history_from_metrics(oracle.trials[trial.trial_id]) == ([], 0.0)


def report_epochs(oracle, trial_id: str, val_losses: list[float]) -> None:
    for epoch, val_loss in enumerate(val_losses):
        record = EpochRecord(epoch + 1, loss=1.0, accuracy=0.5, val_loss=val_loss, val_accuracy=0.6)
        oracle.update_trial(trial_id, protocol.epoch_metrics(record, float(epoch + 1)), step=epoch)


def test_a_worker_restarted_with_its_id_gets_its_trial_back_with_a_fresh_history():
    oracle = chief_oracle()
    first = oracle.create_trial("w1")
    report_epochs(oracle, first.trial_id, [0.9, 0.8])
    again = oracle.create_trial("w1")  # the same worker id asks again: it was restarted
    assert again.trial_id == first.trial_id
    assert protocol.history_from_metrics(oracle.trials[first.trial_id]) == ([], 0.0)
    report_epochs(oracle, first.trial_id, [0.4])
    history, _ = protocol.history_from_metrics(oracle.trials[first.trial_id])
    assert [r.val_loss for r in history] == [0.4]


def test_silent_worker_loses_its_trial_and_its_late_result_is_ignored():
    oracle = chief_oracle(max_trials=2)
    silent, busy = oracle.create_trial("silent"), oracle.create_trial("busy")
    oracle.last_heard[silent.trial_id] -= 100  # nothing heard from it for 100 s
    oracle.given_back.add(silent.trial_id)  # given back once already (tests/test_trust_chief.py)

    assert oracle.give_up_silent(timeout_s=50) == [silent.trial_id]

    assert oracle.trials[silent.trial_id].status == "FAILED"
    assert "worker `silent` went silent: nothing heard for 100 s" in oracle.trials[silent.trial_id].message
    assert list(oracle.ongoing_trials) == ["busy"]
    assert not oracle.search_over()  # the busy worker's trial is still running
    late = oracle.trials[silent.trial_id]
    late.status = "COMPLETED"
    oracle.end_trial(late)  # the silent worker comes back with a result: already recorded FAILED
    assert oracle.end_order.count(silent.trial_id) == 1
    oracle.update_trial(busy.trial_id, {"val_accuracy": 0.75}, step=1)
    busy.status = "COMPLETED"
    oracle.end_trial(busy)
    assert oracle.trials[busy.trial_id].score == 0.75
    assert oracle.search_over()
    assert oracle.failed_in_a_row() == 0


def test_an_unreachable_chief_during_a_trial_ends_the_worker_not_the_trial():
    import grpc

    class Unavailable(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "Connection reset by peer"

    class GoneChief:
        def update_trial(self, trial_id, metrics, step=0):
            raise Unavailable()

    record = EpochRecord(1, loss=0.7, accuracy=0.5, val_loss=0.7, val_accuracy=0.5)
    with pytest.raises(protocol.ChiefLost, match="UNAVAILABLE: Connection reset by peer"):
        protocol.report_epoch(GoneChief(), "0", record, 1.0)


def test_port_already_in_use_is_a_clear_error():
    from chimuf.tuning.chief import start_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StageError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
            start_server(chief_oracle(), Address("127.0.0.1", port))


# --- the command line --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(folder: Path, cache: Path, extra: str = "") -> Path:
    """The tiny study's config, its images cached in `cache`; `extra` lines go to [tune]."""
    path = folder / "tiny.toml"
    path.write_text(TINY_CONFIG.replace("[data]\n", f'[data]\ncache_dir = "{cache}"\n') + extra)
    return path


def test_worker_with_no_chief_says_so_in_one_line_and_exits_nonzero(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", per_class=12, size=24)
    config = write_config(tmp_path, tmp_path / "cache")
    status = main(["tune-worker", "--chief", f"127.0.0.1:{free_port()}", "--config", str(config),
                   "--data", str(data), "--out", str(tmp_path / "run"), "--chief-timeout", "1"])
    err = capsys.readouterr().err
    assert status != 0
    assert "error: no tuning chief answered at 127.0.0.1:" in err
    assert "Traceback" not in err


def test_bad_chief_address_is_refused_before_any_work(tmp_path, capsys):
    status = main(["tune-worker", "--chief", "node7", "--out", str(tmp_path / "run")])
    assert status != 0
    assert "`--chief` must be HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- a chief and workers, as separate processes ------------------------------------------------

# The victim worker blocks after reporting its first epoch, until it is killed: a worker that dies
# mid-trial, at a moment the test chooses.
VICTIM = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import keras
    from chimuf.stages import tune
    from chimuf.cli import main

    real_fit = tune.fit_trial

    class Hang(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            Path(sys.argv[1]).write_text("reported epoch 1")
            time.sleep(600)

    def fit_and_hang(model, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs["callbacks"], Hang()]  # after Keras Tuner's own callbacks
        return real_fit(model, *args, **kwargs)

    tune.fit_trial = fit_and_hang
    sys.exit(main(sys.argv[2:]))
""")


def environment() -> dict[str, str]:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")


def chimuf(*args: str) -> list[str]:
    return [sys.executable, "-m", "chimuf", *args]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run folder whose study stopped after `train`: the chief's next stage is `tune`."""
    root = tmp_path_factory.mktemp("distributed")
    data = make_dataset(root / "data", per_class=12, size=24)
    config = write_config(root, root / "cache")
    done = subprocess.run(chimuf("study", "--config", str(config), "--data", str(data), "--out",
                                 str(root / "run"), "--stop-after", "train"),
                          cwd=root, env=environment(), capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stderr
    return root


class Processes:
    """Every process a test starts, each bounded in time and killed at the end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        self.started[name] = subprocess.Popen(command, cwd=self.folder, env=environment(), stdout=log,
                                              stderr=subprocess.STDOUT)
        return self.started[name]

    def wait(self, name: str, timeout: float) -> int:
        try:
            return self.started[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} still running after {timeout} s; its log:\n{self.log(name)}")

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def kill_all(self) -> None:
        for process in self.started.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def copy_run(trained_run: Path, folder: Path, extra_config: str = "") -> tuple[Path, Path]:
    run = folder / "run"
    shutil.copytree(trained_run / "run", run)
    return run, write_config(folder, trained_run / "cache", extra_config)


def worker_command(port: int, config: Path, run: Path, worker_id: str) -> list[str]:
    return ["tune-worker", "--chief", f"127.0.0.1:{port}", "--config", str(config), "--out", str(run),
            "--id", worker_id, "--chief-timeout", "120"]


def chief_command(port: int, config: Path, run: Path, trained_run: Path) -> list[str]:
    return chimuf("study", "--config", str(config), "--data", str(trained_run / "data"), "--out",
                  str(run), "--stop-after", "tune", "--tune-chief", f"127.0.0.1:{port}")


def local_search(config_path: Path, run: Path, folder: Path, max_trials: int):
    """The same search in this process, without chief or workers, on the run's split and cache."""
    from dataclasses import replace

    from chimuf.core.config import load_config
    from chimuf.core.console import Console
    from chimuf.core.engine import StageContext
    from chimuf.stages import tune

    config = load_config(config_path)
    console = Console(stream=io.StringIO(), live=False)
    cache, split = tune_worker.finished_data(config, run, console)
    ctx = StageContext("tune", folder / "tune", folder, console)
    ctx.dir.mkdir(parents=True)
    return tune.run_tuning(ctx, cache, split, replace(config.tune, max_trials=max_trials), config.train,
                           config.augment, config.seed)


def tune_outcome(run: Path) -> dict:
    return json.loads((run / "stages" / "tune.json").read_text())["outcome"]


@pytest.mark.slow
def test_two_workers_share_the_search_and_the_chief_records_every_trial_once(trained_run, tmp_path):
    run, config = copy_run(trained_run, tmp_path)
    port = free_port()
    processes = Processes(tmp_path)
    try:
        for worker_id in ("w1", "w2"):  # first, so both are waiting when the chief starts serving
            processes.start(worker_id, chimuf(*worker_command(port, config, run, worker_id)))
        chief = processes.start("chief", chief_command(port, config, run, trained_run))
        assert processes.wait("chief", timeout=240) == 0, processes.log("chief")
        for worker_id in ("w1", "w2"):
            assert processes.wait(worker_id, timeout=60) == 0, processes.log(worker_id)
    finally:
        processes.kill_all()

    assert json.loads((run / "run.json").read_text())["pid"] == chief.pid  # workers never touch it
    outcome = tune_outcome(run)
    trials = outcome["trials"]
    assert sorted(t["trial_id"] for t in trials) == [str(i) for i in range(MAX_TRIALS)]
    assert {t["status"] for t in trials} == {"COMPLETED"}
    assert {t["worker"] for t in trials} == {"w1", "w2"}  # both workers ran trials
    for trial in trials:
        assert 1 <= trial["epochs"] == len(trial["history"]) <= 2
        assert trial["score"] == max(epoch["val_accuracy"] for epoch in trial["history"])
    ran = [int(processes.log(w).split("trials ran here")[0].rsplit(" ", 2)[-2]) for w in ("w1", "w2")]
    assert sum(ran) == MAX_TRIALS
    assert outcome["best_score"] == max(t["score"] for t in trials)

    # The random first trials are the local search's, trained alike: a worker changes nothing.
    local = local_search(config, run, tmp_path / "local", max_trials=2)
    for here, there in zip(local.trials, trials, strict=False):
        assert here.hyperparameters == there["hyperparameters"]
        assert [e.val_loss for e in here.history] == pytest.approx(
            [e["val_loss"] for e in there["history"]], rel=1e-5)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_its_trial_to_another_and_the_search_finishes(trained_run, tmp_path):
    run, config = copy_run(trained_run, tmp_path, "worker_timeout_s = 15\n")
    port = free_port()
    marker = tmp_path / "victim-reported"
    processes = Processes(tmp_path)
    try:
        victim = processes.start("victim", [sys.executable, "-c", VICTIM, str(marker),
                                            *worker_command(port, config, run, "victim")])
        processes.start("healthy", chimuf(*worker_command(port, config, run, "healthy")))
        processes.start("chief", chief_command(port, config, run, trained_run))
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert time.monotonic() < deadline, processes.log("victim")
            assert victim.poll() is None, processes.log("victim")
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        assert processes.wait("chief", timeout=240) == 0, processes.log("chief")
        assert processes.wait("healthy", timeout=60) == 0, processes.log("healthy")
    finally:
        processes.kill_all()

    trials = tune_outcome(run)["trials"]
    assert sorted(t["trial_id"] for t in trials) == [str(i) for i in range(MAX_TRIALS)]
    # The victim's trial was given back: the healthy worker ran it, from its first epoch.
    assert {t["worker"] for t in trials} == {"healthy"}
    assert {t["status"] for t in trials} == {"COMPLETED"}
    assert "worker `victim` silent" in processes.log("chief")
    assert "goes to the next worker" in processes.log("chief")



# --- several GPUs ------------------------------------------------------------------------------


def test_one_device_trains_under_the_default_strategy():
    import tensorflow as tf

    if len(tf.config.list_logical_devices("GPU")) > 1:
        pytest.skip("this machine has several GPUs")
    strategy = models.training_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


# Two logical CPUs stand in for two GPUs: the search's trials are built, compiled and trained
# under the MirroredStrategy that training_strategy picks for them.
MIRRORED_SEARCH = textwrap.dedent("""
    import io, json, sys, tempfile
    from pathlib import Path
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    list_devices = tf.config.list_logical_devices
    tf.config.list_logical_devices = lambda kind=None: list_devices("CPU" if kind == "GPU" else kind)

    from chimuf.ml.architectures import models
    from chimuf.stages import tune
    from chimuf.data.audit import audit_folder
    from chimuf.data.cache import build_cache
    from chimuf.core.config import AuditConfig, AugmentConfig, SplitConfig, TrainConfig, TuneConfig
    from chimuf.core.console import Console
    from chimuf.core.engine import StageContext
    from chimuf.data.split import split_dataset
    from tests.conftest import make_dataset

    made = []
    tune.training_strategy = lambda: made.append(models.training_strategy()) or made[-1]
    root = Path(tempfile.mkdtemp())
    console = Console(stream=io.StringIO(), live=False)
    data = make_dataset(root / "data", per_class=10)
    audit = audit_folder(data, AuditConfig(), console)
    cache = build_cache(audit, data, 16, root / "cache", console)
    ctx = StageContext("tune", root / "run" / "tune", root / "run", console)
    space = dict(conv1_filters=(2, 4, 2), conv2_filters=(2, 4, 2), conv3_filters=(2, 4, 2),
                 dense_units=(4, 8, 4), dropout_conv=(0.0, 0.2, 0.1), dropout_dense=(0.0, 0.2, 0.1))
    outcome = tune.run_tuning(ctx, cache, split_dataset(audit, SplitConfig(), seed=0),
                              TuneConfig(max_trials=1, epochs=2, **space),
                              TrainConfig(batch_size=8, precision="float32"), AugmentConfig(), seed=5)
    print(json.dumps({"strategy": type(made[0]).__name__, "replicas": made[0].num_replicas_in_sync,
                      "trials": [(t.status, len(t.history), t.score) for t in outcome.trials]}))
""")


@pytest.mark.slow
def test_several_devices_train_each_trial_under_a_mirrored_strategy():
    done = subprocess.run([sys.executable, "-c", MIRRORED_SEARCH], cwd=Path(__file__).parents[1],
                          env=environment(), capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["strategy"] == "MirroredStrategy" and seen["replicas"] == 2
    (status, epochs, score), = seen["trials"]
    assert status == "COMPLETED" and epochs == 2 and 0.0 <= score <= 1.0
