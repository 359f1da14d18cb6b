"""Exports through Keras' model.export, TFLite quantization (float16, dynamic, int8 calibrated on
representative images), LiteRT's interpreter for the check, and the study's export stage writing a
float and a quantized TFLite with their test accuracies."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from chimuf.core.config import ExportConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext
from chimuf.core.errors import ModelError
from chimuf.core.results import CacheOutcome, SplitOutcome
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.export import accuracy, agreement, export_model
from tests.conftest import make_image

SIZE = 32


def pixels(count: int, seed: int = 0) -> np.ndarray:
    """uint8 (count, 32, 32, 3) with a bright top-left corner for class 0, bottom-right for class 1."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (count, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(count):
        corner = (slice(0, 12), slice(0, 12)) if i % 2 == 0 else (slice(-12, None), slice(-12, None))
        images[i][corner] = 230
    return images


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A model1 at 32 px trained a few epochs on the corner signal, saved with its sidecar."""
    import keras

    from chimuf.ml.architectures.models import build_model, compile_model

    keras.utils.set_random_seed(3)
    model = build_model("model1", SIZE)
    compile_model(model, 3e-3)
    x = pixels(96, seed=1).astype("float32")
    model.fit(x, (np.arange(96) % 2).astype("float32"), epochs=8, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("quantize") / "final.keras"
    model.save(path)
    modelfile.write_classes(path, ["top", "bottom"], 0.5, "fixed for the test")
    return path


def test_each_quantization_shrinks_the_file_and_keeps_the_float_interface(trained, tmp_path):
    samples, labels = pixels(24, seed=7), np.arange(24) % 2
    checks = {q: export_model(trained, "litert", tmp_path, samples, quantize=q, representative=pixels(16, 9))
              for q in ("", "float16", "dynamic", "int8")}
    sizes = {q: c.size_bytes for q, c in checks.items()}
    assert sizes["int8"] < sizes["float16"] < sizes[""] and sizes["dynamic"] < sizes["float16"]
    assert checks[""].path.name == "final.tflite" and checks["int8"].path.name == "final.int8.tflite"
    assert checks[""].max_abs_difference < 1e-5 and checks["float16"].max_abs_difference < 1e-2
    for check in checks.values():  # each still decides the images as the Keras model does, nearly
        assert accuracy(check.probabilities, labels, 0.5) >= 0.9
        assert agreement(check.probabilities, check.keras_probabilities, 0.5) >= 0.9
    assert modelfile.read_sidecar(checks["int8"].path).threshold == 0.5  # the threshold travels


def test_the_tflite_check_runs_on_litert(trained, tmp_path):
    check = export_model(trained, "tflite", tmp_path, pixels(4))
    assert check.runtime.startswith("LiteRT ")


def test_without_litert_the_check_falls_back_on_tensorflows_interpreter_saying_so(trained, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails, as on Windows
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    check = export_model(trained, "tflite", tmp_path, pixels(4))
    assert "tf.lite.Interpreter" in check.runtime and "not installed" in check.runtime
    assert check.max_abs_difference < 1e-5


def test_int8_without_representative_images_is_refused(trained, tmp_path):
    with pytest.raises(ModelError, match="representative images"):
        export_model(trained, "litert", tmp_path, pixels(4), quantize="int8")


def test_quantizing_other_formats_is_refused(trained, tmp_path):
    with pytest.raises(ModelError, match="for TFLite/LiteRT files; got format `onnx`"):
        export_model(trained, "onnx", tmp_path, pixels(4), quantize="float16")


@pytest.mark.slow
def test_openvino_export_runs_on_openvino_beside_its_weights(trained, tmp_path):
    pytest.importorskip("openvino")
    check = export_model(trained, "openvino", tmp_path, pixels(8))
    assert check.path.name == "final.xml" and (tmp_path / "final.bin").is_file()
    assert check.size_bytes > (tmp_path / "final.bin").stat().st_size
    assert check.runtime.startswith("OpenVINO") and check.max_abs_difference < 1e-4


def labelled_folder(root: Path, per_class: int = 6) -> Path:
    for i in range(per_class):
        make_image(root / "top" / f"t{i}.png", size=SIZE, corner="top-left", seed=i)
        make_image(root / "bottom" / f"b{i}.png", size=SIZE, corner="bottom-right", seed=100 + i)
    return root


def test_export_command_sets_float_and_int8_side_by_side_on_labelled_photos(trained, tmp_path, capsys):
    from chimuf.cli import main

    photos = labelled_folder(tmp_path / "photos")
    calibration = labelled_folder(tmp_path / "validation", per_class=4)
    out = tmp_path / "out"
    assert main(["export", str(trained), "--format", "litert", "--quantize", "int8", "--check", str(photos),
                 "--representative", str(calibration), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0] + " " + line.split()[1]: line for line in text.splitlines()[1:]}
    assert set(lines) == {"keras -", "litert no", "litert int8"}
    assert "%" in lines["litert int8"] and "LiteRT" in lines["litert int8"]
    assert (out / "final.tflite").is_file() and (out / "final.int8.tflite").is_file()
    assert (out / "final.int8.tflite").stat().st_size < (out / "final.tflite").stat().st_size


def test_quantize_without_a_tflite_format_is_one_line(trained, tmp_path, capsys):
    from chimuf.cli import main

    assert main(["export", str(trained), "--format", "savedmodel", "--quantize", "dynamic",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--quantize dynamic is for TFLite/LiteRT exports" in err and err.count("\n") == 1


def test_int8_from_the_command_line_needs_real_photos(trained, tmp_path, capsys):
    from chimuf.cli import main

    assert main(["export", str(trained), "--quantize", "int8", "--out", str(tmp_path)]) == 2
    assert "calibrates on real photos" in capsys.readouterr().err


def test_the_export_stage_writes_float_and_int8_tflite_with_their_test_accuracies(trained, tmp_path):
    from chimuf.stages.export import export_final

    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "final.keras").write_bytes(trained.read_bytes())
    images = pixels(40, seed=11)
    np.save(tmp_path / "images.npy", images)
    paths = [f"{'ab'[i % 2]}/{i:02d}.png" for i in range(40)]
    cache = CacheOutcome(str(tmp_path / "images.npy"), paths, [i % 2 for i in range(40)], SIZE, "d")
    split = SplitOutcome(["top", "bottom"], train=paths[:20], validation=paths[20:28], test=paths[28:],
                         counts=[], groups=[], digest="s")
    final = SimpleNamespace(model_path="final/final.keras")
    evaluation = SimpleNamespace(at_validation_threshold=SimpleNamespace(threshold=0.5, rule="fixed"))
    stream = io.StringIO()
    ctx = StageContext("export", run_dir / "export", run_dir, Console(stream, live=False))
    ctx.dir.mkdir()
    outcome = export_final(ctx, cache, split, final, evaluation, ExportConfig())
    assert [(e.format, e.quantization) for e in outcome.exports] == [("tflite", ""), ("tflite", "int8")]
    assert outcome.test_images == 12 and outcome.calibration_images == 8
    assert outcome.test_accuracy is not None and outcome.test_accuracy >= 0.9
    float_tflite, int8_tflite = outcome.exports
    assert int8_tflite.path == "export/final.int8.tflite" and int8_tflite.size_bytes < float_tflite.size_bytes
    assert float_tflite.test_accuracy == pytest.approx(outcome.test_accuracy)
    assert int8_tflite.test_accuracy is not None
    assert abs(int8_tflite.test_accuracy - outcome.test_accuracy) <= 0.1
    assert int8_tflite.runtime.startswith("LiteRT") and "test accuracy" in stream.getvalue()



def test_the_report_sets_the_int8_tflite_beside_the_float_one(tmp_path):
    from chimuf.report.markdown import render_markdown
    from tests.report_fixture import complete_results

    text = render_markdown(complete_results(tmp_path), {}).replace("\\", "")  # Markdown escapes off
    rows = [line for line in text.splitlines() if "final.int8.tflite" in line or "final.tflite" in line]
    assert len(rows) == 2
    assert "int8" in rows[1] and "94.1 %" in rows[1] and "99.2 %" in rows[1]
    assert "the Keras model itself is right on\n94.4 %" in text
    assert "calibrated on 100 validation images" in text
