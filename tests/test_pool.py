"""The pool of worker processes for a stage's units (chimuf.ml.training.pool): how many workers and on
which GPU, the worker's forwarded lines, a killed worker, and a study whose numbers do not depend
on the pool's size."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from chimuf.core.console import Console, ForwardingConsole, unit_line
from chimuf.core.engine import StageContext
from chimuf.ml.training import pool
from chimuf.ml.training.fit import Monitoring
from tests.conftest import make_dataset

# --- how many workers, and on what -------------------------------------------------------------


def test_without_gpus_the_pool_has_one_worker_per_threads_per_unit_cores_or_as_many_as_asked():
    assert pool.worker_slots(0, threads=2, cores=2, gpus=[], units=6) == [None]
    assert pool.worker_slots(0, threads=1, cores=2, gpus=[], units=6) == [None, None]
    assert pool.worker_slots(0, threads=2, cores=16, gpus=[], units=6) == [None] * 6  # no more than units
    assert pool.worker_slots(0, threads=4, cores=2, gpus=[], units=6) == [None]  # at least one
    assert pool.worker_slots(3, threads=2, cores=2, gpus=[], units=6) == [None] * 3  # asked: as asked
    assert pool.worker_slots(3, threads=2, cores=2, gpus=[], units=0) == [None]


def test_with_several_gpus_each_worker_gets_one_gpu_and_never_more_workers_than_gpus():
    four = ["0", "1", "2", "3"]
    assert pool.worker_slots(0, threads=2, cores=64, gpus=four, units=6) == four
    assert pool.worker_slots(2, threads=2, cores=64, gpus=four, units=6) == ["0", "1"]
    assert pool.worker_slots(8, threads=2, cores=64, gpus=["0", "1"], units=6) == ["0", "1"]
    assert pool.worker_slots(0, threads=2, cores=64, gpus=four, units=2) == ["0", "1"]
    assert pool.worker_slots(0, threads=1, cores=64, gpus=["0"], units=6) == ["0"]  # one GPU: in-process


def test_gpu_ids_follow_the_users_cuda_visible_devices():
    assert pool.visible_gpus(2, {}) == ["0", "1"]
    assert pool.visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert pool.visible_gpus(1, {"CUDA_VISIBLE_DEVICES": "GPU-5f1c, GPU-77aa"}) == ["GPU-5f1c"]
    assert pool.visible_gpus(0, {"CUDA_VISIBLE_DEVICES": ""}) == []


# --- the settings -------------------------------------------------------------------------------


def test_the_pools_size_is_no_part_of_a_fingerprint_and_the_thread_count_is():
    from chimuf.core.config import TrainConfig
    from chimuf.core.engine import fingerprinted

    assert fingerprinted(TrainConfig(workers=1)) == fingerprinted(TrainConfig(workers=4))
    assert fingerprinted(TrainConfig(threads_per_unit=1)) != fingerprinted(TrainConfig(threads_per_unit=2))


def test_a_checkpoint_made_in_a_pool_of_two_resumes_in_a_pool_of_one():
    import keras

    from chimuf.core.config import TrainConfig
    from chimuf.ml.training.fit import Stopping, fingerprint

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="out")])
    made = [fingerprint(model, TrainConfig(workers=w), None, 1, 10, 5, Stopping.fixed()) for w in (2, 1)]
    assert made[0] == made[1]
    assert made[0] != fingerprint(model, TrainConfig(threads_per_unit=1), None, 1, 10, 5, Stopping.fixed())


@pytest.mark.parametrize(("key", "value", "words"), [
    ("workers", -1, "`train.workers` must be 0 (one per threads_per_unit cores) or more, got -1"),
    ("threads_per_unit", 0, "`train.threads_per_unit` must be between 1 and 256 threads, got 0"),
])
def test_bad_pool_settings_are_one_line_naming_the_key(key, value, words):
    from chimuf.core.config import load_config
    from chimuf.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"train": {key: value}})
    assert str(caught.value) == words


@pytest.mark.slow
def test_tensorflow_starts_with_the_threads_asked_and_says_when_it_cannot():
    code = ("from chimuf.ml.tfstart import set_threads, start_tensorflow\n"
            "assert start_tensorflow(1) == ''\n"
            "import tensorflow as tf\n"
            "print(tf.config.threading.get_intra_op_parallelism_threads(),"
            " tf.config.threading.get_inter_op_parallelism_threads())\n"
            "tf.ones(2)  # the runtime starts: its threads are fixed now\n"
            "print(set_threads(1) == '', set_threads(3))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second = done.stdout.splitlines()
    assert first == "1 1"
    assert second.startswith("True TensorFlow was started before chimuf, with 1 threads, not "
                             "train.threads_per_unit = 3")


# --- what a worker says ------------------------------------------------------------------------


def test_a_workers_messages_go_whole_to_the_study_with_the_unit_named():
    sent: list[tuple[str, bool, bool]] = []
    console = ForwardingConsole(lambda message, echo, log: sent.append((message, echo, log)))
    console.info("  model2 epoch 1/2: loss 0.6\n  resuming")
    console.write("summary", echo=False)
    assert sent == [("  model2 epoch 1/2: loss 0.6\n  resuming", True, True), ("summary", False, True)]
    assert not console.live
    assert unit_line("model2", sent[0][0]) == "  model2 epoch 1/2: loss 0.6\n  model2: resuming"
    assert unit_line("fold1", "warning: fold1: diverged") == "warning: fold1: diverged"


def test_a_killed_worker_is_one_line_naming_the_unit_the_signal_and_the_way_on():
    message = pool.death_message("model3_aug", 4242, -signal.SIGKILL)
    assert "\n" not in message
    assert message.startswith("model3_aug: its worker process (pid 4242) ended by signal SIGKILL")
    assert "rerun the study to resume it" in message
    assert "exit code 3" in pool.death_message("fold2", 1, 3)


def test_a_worker_whose_study_is_gone_ends_itself():
    code = "from chimuf.ml.training.pool import exit_with_parent; exit_with_parent(-1); print('still here')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (1, "")


# --- the pool with real worker processes (no training: the mechanics) ---------------------------


@dataclass
class Echo:
    name: str
    pid: int


def say_and_return(ctx: StageContext, monitor: Monitoring, *, name: str) -> Echo:
    eta = monitor.eta(ctx.name, name)
    left = eta(1, 2, 0.5) if eta is not None else "no clock"
    ctx.console.info(f"  {name} epoch 1/2: fine; {left}")
    return Echo(name, os.getpid())


def die(ctx: StageContext, monitor: Monitoring, *, name: str) -> Echo:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def fail(ctx: StageContext, monitor: Monitoring, *, name: str) -> Echo:
    raise ValueError(f"{name} cannot")


class FixedClock:
    def eta(self, stage: str, name: str):
        return lambda epoch, max_epochs, seconds: f"study ETA {epoch}m from {stage}/{name}"

    def pooled(self, stage: str, slots: int) -> None:
        pass

    def unit_done(self, stage: str, name: str, epochs_run: int | None = None, learn: bool = True) -> None:
        pass


def test_with_the_users_callbacks_the_units_run_here_one_after_another_and_the_study_says_so(
        tmp_path, monkeypatch):
    import functools

    monkeypatch.setattr(pool, "local_gpus", lambda: [])
    stream = io.StringIO()
    ctx = StageContext("train", tmp_path / "train", tmp_path, Console(stream=stream, live=False))
    units = [pool.Unit(name, functools.partial(say_and_return, name=name)) for name in ("a", "b")]
    watched = Monitoring(callbacks=(object(),))
    results = pool.run_units(ctx, units, Echo, workers=2, threads=1, monitor=watched)
    assert [r.pid for r in results] == [os.getpid()] * 2
    assert "  Keras callbacks cannot cross processes: the 2 units run one after another in this process\n" \
        in stream.getvalue()


def test_in_the_studys_process_a_recorded_failure_is_returned_and_any_other_is_raised(tmp_path, monkeypatch):
    import functools

    monkeypatch.setattr(pool, "local_gpus", lambda: [])
    ctx = StageContext("kfold", tmp_path / "kfold", tmp_path, Console(stream=io.StringIO(), live=False))
    unit = pool.Unit("c", functools.partial(fail, name="c"))
    [failure] = pool.run_units(ctx, [unit], Echo, workers=1, threads=1, monitor=Monitoring(),
                               recorded=lambda: (ValueError,))
    assert failure == pool.UnitFailure("c", "ValueError: c cannot", False, failure.wall_s)
    with pytest.raises(ValueError, match="c cannot"):
        pool.run_units(ctx, [unit], Echo, workers=1, threads=1, monitor=Monitoring())



def test_the_pool_tells_the_clock_its_width_the_units_reused_and_each_units_end(tmp_path, monkeypatch):
    """The clock schedules a pooled stage on its workers and learns from the units that end: the
    pool says how many run at once, which were reused, and when each ends (done or failed)."""
    import functools

    from chimuf.core.plan import Plan, StudyClock, Work

    monkeypatch.setattr(pool, "local_gpus", lambda: [])
    ctx = StageContext("train", tmp_path / "train", tmp_path, Console(stream=io.StringIO(), live=False))
    plan = Plan(stages=["train"], work=[Work("train", name, 10, 5, 20, 1.0) for name in "abcdef"])
    clock = StudyClock(plan)
    a, b = (pool.Unit(name, functools.partial(say_and_return, name=name)) for name in "ab")
    pool.run_units(ctx, [a], Echo, workers=1, threads=1, monitor=Monitoring())  # a: saved
    pool.run_units(ctx, [a], Echo, workers=2, threads=1, monitor=Monitoring(clock=clock))
    assert clock.slots["train"] == 1 and ("train", "a") in clock.started and not clock.ran  # reused
    failing = pool.Unit("e", functools.partial(fail, name="e"))
    pool.run_units(ctx, [failing], Echo, workers=1, threads=1, monitor=Monitoring(clock=clock),
                   recorded=lambda: (ValueError,))  # in this process: a failure teaches nothing
    pool.run_units(ctx, [b], Echo, workers=1, threads=1, monitor=Monitoring(clock=clock))
    assert clock.ran == {("train", "b"): 1} and not clock.running  # b said epoch 1 of 2, then ended

    clock = StudyClock(plan)
    clock.pooled("train", 2)  # as run_units says before it starts a pool of two
    workers = pool.Pool(ctx, Echo, [None, None], 1, Monitoring(clock=clock), None)
    workers.handle(("eta", "c", 1, 20, 1.0), [])
    workers.handle(("eta", "d", 1, 20, 1.0), [])
    workers.handle(("eta", "c", 2, 20, 1.0), [])
    workers.handle(("done", "c"), [])  # its outcome cannot be read back: a failure, no lesson
    workers.handle(("eta", "d", 2, 20, 1.0), [])
    workers.handle(("failed", "d", "ValueError: d cannot", False, 1.0), [])
    assert not clock.running and not clock.ran
    (ctx.dir / "units" / "f.json").write_text(json.dumps({"name": "f", "pid": 1}))
    workers.handle(("eta", "f", 7, 20, 1.0), [])
    workers.handle(("done", "f"), [])
    assert clock.ran == {("train", "f"): 7}


@pytest.mark.slow
def test_units_run_in_workers_a_killed_one_fails_in_one_line_and_the_rest_go_on(tmp_path, monkeypatch):
    import functools

    monkeypatch.setattr(pool, "local_gpus", lambda: [])
    stream = io.StringIO()
    ctx = StageContext("train", tmp_path / "train", tmp_path, Console(stream=stream, live=False))
    units = [pool.Unit("a", functools.partial(say_and_return, name="a")),
             pool.Unit("b", functools.partial(die, name="b")),
             pool.Unit("c", functools.partial(fail, name="c")),
             pool.Unit("d", functools.partial(say_and_return, name="d"))]
    monitor = Monitoring(clock=FixedClock())  # type: ignore[arg-type]
    results = pool.run_units(ctx, units, Echo, workers=2, threads=1, monitor=monitor)

    a, b, c, d = results
    assert isinstance(a, Echo) and isinstance(d, Echo) and a.pid != os.getpid()
    assert isinstance(b, pool.UnitFailure) and not b.fatal and "signal SIGKILL" in b.error
    assert isinstance(c, pool.UnitFailure) and c.fatal and c.error == "ValueError: c cannot"
    shown = stream.getvalue()
    assert "  a epoch 1/2: fine; study ETA 1m from train/a\n" in shown  # the study's clock, filled in
    assert "  2 units" not in shown and "  4 units in 2 worker processes of 1 TensorFlow threads" in shown
    assert json.loads((tmp_path / "train/units/a.json").read_text())["name"] == "a"
    assert not (tmp_path / "train/units/b.json").exists()  # not memoised: a rerun tries it again

    # a rerun reuses what was saved and runs only what is not
    stream.truncate(0)
    again = pool.run_units(ctx, units[:1], Echo, workers=2, threads=1, monitor=monitor)
    assert again == [a] and "a: already done, reused" in stream.getvalue()


# --- a study: the same numbers with one worker and with two -------------------------------------

# what a clock measured, and a saved file's digest (a .keras file records when it was saved)
TIMINGS = {"wall_s", "images_per_s", "started", "finished", "seconds", "model_sha256"}


def numbers(value: object) -> object:
    """`value` without what a clock measured (timings differ from run to run)."""
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items() if k not in TIMINGS and not k.endswith("_s")}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    return value


def study(tmp_path: Path, data: Path, workers: int) -> dict:
    config = tmp_path / f"workers{workers}.toml"
    config.write_text(f"[train]\nmodels = [1]\nepochs = 1\nworkers = {workers}\nthreads_per_unit = 1\n"
                      "[tune]\nmax_trials = 1\nepochs = 1\n[kfold]\nfolds = 2\nepochs = 1\n"
                      "[evaluate]\nbootstrap_samples = 20\n", encoding="utf-8")
    out = tmp_path / f"run{workers}"
    env = {**os.environ, "CHIMUF_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "chimuf", "study", "--profile", "smoke", "--config", str(config),
               "--data", str(data), "--out", str(out), "--stop-after", "kfold"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    if workers > 1:
        assert "units in 2 worker processes of 1 TensorFlow threads" in done.stderr
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_a_study_gives_the_same_numbers_with_one_worker_and_with_two(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=16, size=40)
    one, two = study(tmp_path, data, 1), study(tmp_path, data, 2)
    for stage in ("train", "final", "kfold"):
        assert numbers(one[stage]) == numbers(two[stage]), stage
    assert [t["name"] for t in one["train"]["trainings"]] == ["model1", "model1_aug"]
    assert [f["status"] for f in two["kfold"]["folds"]] == ["COMPLETED", "COMPLETED"]
