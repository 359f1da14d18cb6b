"""Where people look and where models go: TensorBoard logs, MLflow, exports, the travelling threshold."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

from chimuf.core.config import AugmentConfig, TrackingConfig, TrainConfig
from chimuf.core.console import Console
from chimuf.core.results import EpochRecord
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.training.fit import fit
from chimuf.ml.training.tensorboard import EpochLog
from tests.conftest import SHARED_DATA, make_image

SIZE = 16
CFG = TrainConfig(epochs=3, batch_size=4, patience=5, start_from_epoch=0, precision="float32")


def quiet() -> Console:
    return Console(stream=io.StringIO(), live=False)


def tiny_model():
    import keras

    from chimuf.ml.architectures.models import build_model, compile_model

    keras.utils.set_random_seed(3)
    model = build_model("model1", SIZE)
    compile_model(model, 1e-3)
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 4, dtype=np.int32)
    return (images, labels), (images[:4], labels[:4])


def logged(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] of every event file under `folder`, read with TensorFlow's own reader."""
    import tensorflow as tf

    found: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tensor = value.HasField("tensor")
                number = float(tf.make_ndarray(value.tensor)) if tensor else value.simple_value
                found.setdefault(value.tag, []).append((event.step, number))
    return found


# --- TensorBoard -------------------------------------------------------------------------------


@pytest.mark.slow
def test_tensorboard_curve_continues_after_a_kill_with_no_step_missing_or_twice(monkeypatch, tmp_path,
                                                                               data):
    log = EpochLog(tmp_path / "tb" / "train" / "t")
    real_write = EpochLog.write
    calls = []

    def killed_after_the_checkpoint_of_epoch_2(self, history):
        calls.append(len(history))
        if history and history[-1].epoch == 2 and calls.count(2) == 1:
            raise KeyboardInterrupt  # epoch 2 checkpointed, its log not yet written
        real_write(self, history)

    with monkeypatch.context() as patch:
        patch.setattr(EpochLog, "write", killed_after_the_checkpoint_of_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            fit(tiny_model(), *data, CFG, AugmentConfig(), 7, tmp_path / "work", quiet(), "t", log=log)
    result = fit(tiny_model(), *data, CFG, AugmentConfig(), 7, tmp_path / "work", quiet(), "t", log=log)

    train, validation = logged(log.folder / "train"), logged(log.folder / "validation")
    assert [step for step, _ in train["epoch_loss"]] == [1, 2, 3]
    assert [step for step, _ in validation["epoch_accuracy"]] == [1, 2, 3]
    assert [v for _, v in validation["epoch_loss"]] == pytest.approx([r.val_loss for r in result.history])
    assert [v for _, v in train["epoch_learning_rate"]] == pytest.approx([1e-3] * 3)
    assert all(v > 0 for _, v in train["epoch_images_per_s"])


def test_a_training_that_starts_over_starts_its_log_over(tmp_path):
    log = EpochLog(tmp_path / "tb")
    history = [EpochRecord(e, 1.0 / e, 0.5, 1.0, 0.5, images_per_s=10.0, learning_rate=0.1) for e in (1, 2)]
    log.write(history)
    log.write(history)  # nothing new: nothing written
    log.close()
    assert [s for s, _ in logged(log.folder / "train")["epoch_loss"]] == [1, 2]
    log.reset()
    log.write(history[:1])
    log.close()
    assert [s for s, _ in logged(log.folder / "train")["epoch_loss"]] == [1]


def test_callbacks_see_the_real_epoch_numbers(tmp_path, data):
    import keras

    seen: list[int] = []
    spy = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(epoch))
    fit(tiny_model(), *data, CFG, None, 1, tmp_path / "work", quiet(), "t", callbacks=(spy,))
    assert seen == [0, 1, 2]  # Keras counts from 0: epochs 1, 2, 3


# --- the threshold that travels ----------------------------------------------------------------


@pytest.fixture(scope="module")
def half_model(tmp_path_factory) -> Path:
    """A model that says P(muffin) = 0.5 + a tiny bit for every image (zero weights, small bias)."""
    from chimuf.ml.architectures.models import build_model

    model = build_model("model1", 24)
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    model.get_layer("output").bias.assign([0.02])  # sigmoid(0.02) ≈ 0.505
    path = tmp_path_factory.mktemp("model") / "half.keras"
    model.save(path)
    return path


def test_predict_decides_at_the_sidecar_threshold_and_the_flag_overrides_it(half_model, tmp_path, capsys):
    from chimuf.cli import main

    modelfile.write_classes(half_model, ["chihuahua", "muffin"], 0.9, "chosen for the test")
    image = make_image(tmp_path / "photo.png", size=40)
    assert main(["predict", str(half_model), str(image), "--csv"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split(",")[1] == "chihuahua"  # 0.505 is not above 0.9
    assert "threshold 0.9 (from half.classes.json: chosen for the test)" in err
    assert main(["predict", str(half_model), str(image), "--csv", "--threshold", "0.5"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split(",")[1] == "muffin"
    assert "given with --threshold" in err


def test_a_sidecar_without_a_threshold_decides_at_one_half(half_model):
    modelfile.write_classes(half_model, ["a", "b"])
    sidecar = modelfile.read_sidecar(half_model)
    assert (sidecar.threshold, sidecar.threshold_rule) == (0.5, "")


@pytest.mark.parametrize("bad", ["0", "1", "-0.2", "nan", "half"])
def test_a_threshold_outside_0_1_is_refused_in_one_line(half_model, tmp_path, capsys, bad):
    from chimuf.cli import main

    image = make_image(tmp_path / "photo.png", size=40)
    with pytest.raises(SystemExit):
        main(["predict", str(half_model), str(image), "--threshold", bad])
    assert "--threshold" in capsys.readouterr().err


# --- export ------------------------------------------------------------------------------------


def photos(size: int, count: int = 12) -> np.ndarray:
    """Real photos when the shared folder is there (else the tests' own images), as the cache has them."""
    from chimuf.core.config import AuditConfig
    from chimuf.data.imagefile import load_rgb, model_array

    files = sorted(SHARED_DATA.glob("*/*.jpg"))[::400][:count] if SHARED_DATA.is_dir() else []
    if not files:
        files = [make_image(Path("/tmp") / f"chimuf-export-{i}.png", size=64, seed=i) for i in range(count)]
    return np.stack([model_array(load_rgb(f, AuditConfig()), size) for f in files])


@pytest.fixture(scope="module")
def trained_paths(tmp_path_factory) -> dict[str, Path]:
    """model1 at 32 px with random weights, saved in float32 and in mixed bfloat16."""
    import keras

    from chimuf.ml.architectures.models import build_model

    folder = tmp_path_factory.mktemp("export")
    paths = {}
    for precision in ("float32", "mixed_bfloat16"):
        keras.utils.set_random_seed(5)
        path = folder / precision / "final.keras"
        path.parent.mkdir()
        build_model("model1", 32, precision=precision).save(path)
        modelfile.write_classes(path, ["chihuahua", "muffin"], 0.42, "chosen for the test")
        paths[precision] = path
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "litert", "savedmodel", "onnx", "openvino"])
def test_each_export_gives_the_keras_probabilities_on_real_photos(trained_paths, tmp_path, fmt):
    from chimuf.ml.modelfiles.export import export_model

    check = export_model(trained_paths["float32"], fmt, tmp_path / "out", photos(32))
    assert check.images_checked == 12
    assert check.max_abs_difference <= 1e-4
    assert check.path.exists() and check.size_bytes > 0
    assert modelfile.read_sidecar(check.path).threshold == 0.42  # the threshold travels with it


@pytest.mark.slow
def test_a_bf16_model_is_exported_as_its_float32_copy(trained_paths, tmp_path):
    from chimuf.ml.modelfiles.export import export_model

    check = export_model(trained_paths["mixed_bfloat16"], "tflite", tmp_path / "out", photos(32))
    assert check.max_abs_difference <= 1e-4  # against the float32 copy that was exported
    assert check.max_abs_difference_saved < 0.05  # and close to the bf16 model itself


def test_export_command_prints_the_check(trained_paths, tmp_path, capsys):
    from chimuf.cli import main

    assert main(["export", str(trained_paths["float32"]), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "tflite" in out and "final.tflite" in out
    assert (tmp_path / "out" / "final.tflite").is_file()
    assert (tmp_path / "out" / "final.classes.json").is_file()


def test_export_reads_the_model_size_limit_from_the_config(trained_paths, tmp_path, capsys):
    """As predict and evaluate: a model past the config's `model_files.max_params` is refused
    in one line before anything is exported."""
    from chimuf.cli import main

    config = tmp_path / "small.toml"
    config.write_text("[model_files]\nmax_params = 10\n")
    out = tmp_path / "out"
    model = str(trained_paths["float32"])
    assert main(["-q", "export", model, "--out", str(out), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "more than `model_files.max_params` = 10" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


# --- MLflow ------------------------------------------------------------------------------------


@pytest.fixture
def finished_run(tmp_path) -> Path:
    from tests.report_fixture import complete_results, write_run

    run_dir = tmp_path / "run"
    write_run(run_dir, complete_results(run_dir))
    (run_dir / "report").mkdir()
    (run_dir / "report" / "index.html").write_text("<html>report</html>")
    (run_dir / "export").mkdir()
    (run_dir / "export" / "final.classes.json").write_text('{"classes": ["a", "b"]}')
    return run_dir


def test_a_run_is_logged_to_mlflow_with_params_metrics_and_artifacts_once(finished_run, tmp_path):
    import mlflow

    from chimuf.report import read_results
    from chimuf.tools import tracking

    folder = tmp_path / "mlruns"
    cfg = TrackingConfig(mlflow_uri=str(folder), mlflow_experiment="tests")
    console = quiet()
    run_id = tracking.log_run(read_results(finished_run), finished_run, cfg, console)
    assert run_id is not None
    store = f"sqlite:///{(folder / 'mlflow.db').as_posix()}"  # a local folder holds an SQLite store
    assert (folder / "mlflow.db").is_file() and any((folder / "artifacts").rglob("results.json"))
    assert f"mlflow ui --backend-store-uri {store}" in console.stream.getvalue()
    with tracking.mlflow_calls(store):
        client = mlflow.tracking.MlflowClient(store)
        run = client.get_run(run_id)
        history = client.get_metric_history(run_id, "model1.val_accuracy")
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        model_files = {a.path for a in client.list_artifacts(run_id, "model")}
    assert run.data.params["train.epochs"] == "8"  # the quick profile's
    assert run.data.metrics["test_accuracy"] == pytest.approx(0.9514)
    assert run.data.tags["chimuf.data_digest"] == "9f" * 32
    assert [m.step for m in history] == list(range(1, 20))
    assert {"results.json", "report", "model"} <= artifacts
    assert "model/final.classes.json" in model_files
    assert tracking.log_run(read_results(finished_run), finished_run, cfg, console) == run_id  # once
    assert "logged already" in console.stream.getvalue()


def test_an_unreachable_tracker_is_one_warning_not_a_failure(finished_run):
    from chimuf.report import read_results
    from chimuf.tools import tracking

    stream = io.StringIO()
    started = time.monotonic()
    cfg = TrackingConfig(mlflow_uri="http://127.0.0.1:9", mlflow_experiment="tests")
    console = Console(stream=stream, live=False)
    assert tracking.log_run(read_results(finished_run), finished_run, cfg, console) is None
    assert time.monotonic() - started < 60
    (line,) = [line for line in stream.getvalue().splitlines() if line.startswith("warning:")]
    assert "could not log this run" in line and "chimuf track" in line
