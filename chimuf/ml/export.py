"""A saved model in the formats other programs run: SavedModel, TFLite, ONNX, each checked.

    .keras (chimuf.ml.modelfile's checks) → float32 copy → SavedModel → TFLite (TensorFlow's converter)
                                                      ↘ ONNX (tf2onnx, `pip install chimuf[onnx]`)
    → the exported model's P(classes[1]) on sample images against the Keras model's: max |diff|

Every export gets the model's sidecar beside it (class names and decision threshold,
`<name>.classes.json`), so the threshold chosen on validation data travels with it. Models trained
in mixed bfloat16 are exported as a float32 copy with the same weights (TFLite and ONNX runtimes
rarely have bf16 kernels); the check compares against that copy, and against the bf16 model too.

The input is raw pixels as the Keras model takes them: float32 (N, S, S, 3) on 0-255, the
rescaling happens inside. The output is (N, 1): the probability of classes[1].
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.errors import ModelError
from chimuf.ml import modelfile
from chimuf.ml.models import float32_copy, model_precision
from chimuf.ml.predictor import probabilities_of
from chimuf.ml.tfstart import native_notes_filtered

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import ModelFilesConfig

FORMATS = ("savedmodel", "tflite", "onnx")
SUFFIX = {"savedmodel": ".savedmodel", "tflite": ".tflite", "onnx": ".onnx"}  # savedmodel: a folder
ONNX_OPSET = 17
ONNX_HINT = "install the ONNX exporter with `pip install 'chimuf[onnx]'` (tf2onnx and onnxruntime)"


@dataclass
class ExportCheck:
    """One exported model and how closely it agrees with the Keras model it came from."""

    format: str
    path: Path
    size_bytes: int
    images_checked: int
    max_abs_difference: float  # against the float32 Keras model that was exported
    max_abs_difference_saved: float  # against the saved model itself (differs when that is bf16)


def export_model(model_path: Path, fmt: str, out_dir: Path, samples: np.ndarray,
                 limits: ModelFilesConfig | None = None) -> ExportCheck:
    """Export the model at `model_path` as `fmt` into `out_dir`, its sidecar beside it, and check
    it on `samples` (uint8 (N, S, S, 3)); `limits` bound what the model file may hold."""
    if fmt not in FORMATS:
        raise ModelError(f"export format must be one of {', '.join(FORMATS)}; got `{fmt}`")
    model = modelfile.load_model(model_path, limits)
    exported = float32_copy(model) if model_precision(model) != "float32" else model
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / (Path(model_path).stem + SUFFIX[fmt])
    with tempfile.TemporaryDirectory(prefix="chimuf-export-") as scratch:
        saved_model = Path(scratch) / "savedmodel"
        exported.export(str(saved_model), format="tf_saved_model", verbose=False)
        built = {"savedmodel": lambda: saved_model, "tflite": lambda: to_tflite(saved_model, scratch),
                 "onnx": lambda: to_onnx(exported, scratch)}[fmt]()
        replace_with(target, built)
    copy_sidecar(model_path, target)
    got = run_exported(fmt, target, samples)  # (N,)
    return ExportCheck(fmt, target, size_of(target), len(samples),
                       float(np.max(np.abs(got - probabilities_of(exported, samples)))),
                       float(np.max(np.abs(got - probabilities_of(model, samples)))))


# --- the converters ----------------------------------------------------------------------------


def to_tflite(saved_model: Path, scratch: str) -> Path:
    import tensorflow as tf

    flat = tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
    path = Path(scratch) / "model.tflite"
    path.write_bytes(flat)
    return path


def to_onnx(model: keras.Model, scratch: str) -> Path:
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError:
        raise ModelError(f"ONNX export needs tf2onnx, which is not installed; {ONNX_HINT}") from None
    size = int(model.inputs[0].shape[1])
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET)
    path = Path(scratch) / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


# --- running an export -------------------------------------------------------------------------


def run_exported(fmt: str, path: Path, samples: np.ndarray) -> np.ndarray:
    """P(classes[1]) of uint8 `samples` by the exported model itself: float64 (N,)."""
    pixels = samples.astype(np.float32)
    if fmt == "savedmodel":
        import tensorflow as tf

        serve = tf.saved_model.load(str(path)).signatures["serving_default"]
        (output,) = serve(tf.constant(pixels)).values()
        return np.asarray(output, dtype=np.float64)[:, 0]
    if fmt == "tflite":
        return run_tflite(path, pixels)
    return run_onnx(path, pixels)


def run_tflite(path: Path, pixels: np.ndarray) -> np.ndarray:
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings(), native_notes_filtered():  # LiteRT notices, the XNNPACK note
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        interpreter.resize_tensor_input(inp["index"], list(pixels.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], pixels)
        interpreter.invoke()
    return np.asarray(interpreter.get_tensor(out["index"]), dtype=np.float64)[:, 0]


def run_onnx(path: Path, pixels: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(f"checking an ONNX export needs onnxruntime, which is not installed; "
                         f"{ONNX_HINT}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: pixels})
    return np.asarray(output, dtype=np.float64)[:, 0]


# --- files -------------------------------------------------------------------------------------


def replace_with(target: Path, built: Path) -> None:
    """Move the finished export to `target`, replacing an older one only once this one is whole."""
    staged = target.with_name(f".{target.name}.partial")
    if staged.exists():
        shutil.rmtree(staged) if staged.is_dir() else staged.unlink()
    shutil.move(str(built), staged)
    if target.is_dir():
        shutil.rmtree(target)
    staged.replace(target)


def copy_sidecar(model_path: Path, target: Path) -> None:
    sidecar = modelfile.read_sidecar(model_path)
    if sidecar is not None:
        modelfile.write_classes(target, sidecar.classes, sidecar.threshold, sidecar.threshold_rule)


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
