"""A saved model in the formats other programs run, each checked against the Keras model.

    .keras (chimuf.ml.modelfiles.modelfile's checks) → float32 copy → Keras' own model.export(format=...):
        savedmodel  tf_saved_model   TensorFlow Serving, TF.js converters
        tflite      litert           phones, small boards (LiteRT, formerly TensorFlow Lite);
                                     optionally quantized: float16, dynamic (int8 weights) or int8
                                     (weights and activations, calibrated on representative images)
        onnx        onnx             onnxruntime and friends (`pip install chimuf[onnx]`)
        openvino    openvino         Intel CPUs, GPUs, NPUs (`pip install chimuf[openvino]`)
    → the exported model's P(classes[1]) on sample images, run by the format's own runtime, against
      the Keras model's: the largest difference, and the decisions of both at the model's threshold

Every export gets the model's sidecar beside it (class names and decision threshold,
`<name>.classes.json`), so the threshold chosen on validation data travels with it. Models trained
in mixed precision are exported as a float32 copy with the same weights (TFLite, ONNX and OpenVINO
runtimes rarely have bf16 kernels); the check compares against that copy, and against the mixed
model too. TFLite files are run by LiteRT's own interpreter (the `ai-edge-litert` package);
where it is not installed (Windows has no wheels), by TensorFlow's deprecated tf.lite.Interpreter,
and the check says which ran it.

The input is raw pixels as the Keras model takes them: float32 (N, S, S, 3) on 0-255, the
rescaling happens inside; quantized models keep that float interface. The output is (N, 1): the
probability of classes[1].
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chimuf.core.errors import ModelError
from chimuf.ml.architectures.models import float32_copy, model_precision
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.predictor import probabilities_of
from chimuf.ml.tfstart import native_notes_filtered

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import ModelFilesConfig

FORMATS = ("savedmodel", "tflite", "litert", "onnx", "openvino")  # litert: tflite's new name
KERAS_FORMAT = {"savedmodel": "tf_saved_model", "tflite": "litert", "litert": "litert", "onnx": "onnx",
                "openvino": "openvino"}
SUFFIX = {"savedmodel": ".savedmodel", "tflite": ".tflite", "litert": ".tflite", "onnx": ".onnx",
          "openvino": ".xml"}  # savedmodel: a folder; openvino: the .xml with its weights in a .bin
QUANTIZATIONS = ("float16", "dynamic", "int8")
QUANTIZABLE = ("tflite", "litert")
ONNX_OPSET = 17
HINTS = {"onnx": "install the ONNX exporter with `pip install 'chimuf[onnx]'` (tf2onnx and onnxruntime)",
         "openvino": "install OpenVINO with `pip install 'chimuf[openvino]'`"}


@dataclass
class ExportCheck:
    """One exported model and how closely it agrees with the Keras model it came from."""

    format: str
    path: Path
    size_bytes: int
    images_checked: int
    max_abs_difference: float  # against the float32 Keras model that was exported
    max_abs_difference_saved: float  # against the saved model itself (differs when that is mixed)
    quantization: str  # "" (float32) or one of QUANTIZATIONS
    runtime: str  # what ran the export for the check ("LiteRT 2.3.0", "onnxruntime 1.23.2", ...)
    probabilities: np.ndarray  # the export's P(classes[1]) on the checked images, float64 (N,)
    keras_probabilities: np.ndarray  # the float32 Keras model's on the same images


def export_model(model_path: Path, fmt: str, out_dir: Path, samples: np.ndarray,
                 limits: ModelFilesConfig | None = None, quantize: str = "",
                 representative: np.ndarray | None = None) -> ExportCheck:
    """Export the model at `model_path` as `fmt` into `out_dir`, its sidecar beside it, and check
    it on `samples` (uint8 (N, S, S, 3)); `limits` bound what the model file may hold. With
    `quantize` (TFLite only), the file is `<name>.<quantize>.tflite`; int8 is calibrated on
    `representative` (uint8 (M, S, S, 3): validation images, not the ones checked)."""
    check_request(fmt, quantize, representative)
    model = modelfile.load_model(model_path, limits)
    exported = float32_copy(model) if model_precision(model) != "float32" else model
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(model_path).stem + (f".{quantize}" if quantize else "")
    target = out_dir / (stem + SUFFIX[fmt])
    with tempfile.TemporaryDirectory(prefix="chimuf-export-") as scratch:
        built = Path(scratch) / ("model" + SUFFIX[fmt])
        keras_export(exported, fmt, built, converter_options(quantize, representative))
        for part in companions(built):
            replace_with(target.with_suffix(part.suffix), part)
        replace_with(target, built)
    copy_sidecar(model_path, target)
    got, runtime = run_exported(fmt, target, samples)  # (N,)
    reference = probabilities_of(exported, samples)
    return ExportCheck(fmt, target, size_of(target), len(samples),
                       float(np.max(np.abs(got - reference))),
                       float(np.max(np.abs(got - probabilities_of(model, samples)))),
                       quantize, runtime, got, reference)


def check_request(fmt: str, quantize: str, representative: np.ndarray | None) -> None:
    if fmt not in FORMATS:
        raise ModelError(f"export format must be one of {', '.join(FORMATS)}; got `{fmt}`")
    if quantize and quantize not in QUANTIZATIONS:
        raise ModelError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got `{quantize}`")
    if quantize and fmt not in QUANTIZABLE:
        raise ModelError(f"quantization ({quantize}) is for TFLite/LiteRT files; got format `{fmt}`: "
                         "export it as tflite, or leave the quantization out")
    if quantize == "int8" and (representative is None or len(representative) == 0):
        raise ModelError("int8 quantization needs representative images to calibrate on; give some "
                         "(validation photos), or quantize as float16 or dynamic")


# --- Keras' exporters --------------------------------------------------------------------------


def keras_export(model: keras.Model, fmt: str, path: Path, options: dict[str, Any]) -> None:
    """`model.export(path, format=...)`, the missing optional package named in one line."""
    extra = {"opset_version": ONNX_OPSET} if fmt == "onnx" else {}
    size = int(model.inputs[0].shape[1])
    model(np.zeros((1, size, size, 3), np.float32), training=False)  # Keras' ONNX export wants a called model
    try:
        with native_notes_filtered():  # the converter's C++ notes
            model.export(str(path), format=KERAS_FORMAT[fmt], verbose=False, **extra, **options)
    except ImportError as exc:
        if fmt not in HINTS:
            raise
        raise ModelError(f"{fmt} export needs {exc.name or 'a package'}, which is not installed; "
                         f"{HINTS[fmt]}") from None


def converter_options(quantize: str, representative: np.ndarray | None) -> dict[str, Any]:
    """The TFLite converter's settings for `quantize` (Keras passes them on); {} for float32.

    float16: weights stored as float16, computed in float32 (half the size, ~no accuracy lost);
    dynamic: int8 weights, activations quantized on the fly (a quarter of the size);
    int8: int8 weights and activations, their ranges calibrated on `representative` images; the
    input and output stay float32, so the model is called as the float one is.
    """
    if not quantize:
        return {}
    import tensorflow as tf

    options: dict[str, Any] = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    if quantize == "int8":
        assert representative is not None
        options["representative_dataset"] = representative_dataset(representative)
    return options


def representative_dataset(images: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The converter's calibration input: each image alone, as float32 (1, S, S, 3) raw pixels."""
    def batches() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [image[None].astype(np.float32)]

    return batches


def companions(built: Path) -> list[Path]:
    """Files an export writes beside its main one: OpenVINO's weights (.bin beside the .xml)."""
    return [built.with_suffix(".bin")] if built.suffix == ".xml" else []


# --- running an export -------------------------------------------------------------------------


def run_exported(fmt: str, path: Path, samples: np.ndarray, batch: int = 64) -> tuple[np.ndarray, str]:
    """P(classes[1]) of uint8 `samples` by the exported model's own runtime, `batch` images at a
    time: float64 (N,), and which runtime that was."""
    run, runtime = open_runtime(fmt, path)
    parts = [run(samples[start:start + batch].astype(np.float32)) for start in range(0, len(samples), batch)]
    return (np.concatenate(parts) if parts else np.zeros(0)), runtime


def open_runtime(fmt: str, path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The export at `path`, loaded by its format's runtime: pixels (n, S, S, 3) float32 → (n,)."""
    if fmt == "savedmodel":
        import tensorflow as tf

        serve = tf.saved_model.load(str(path)).signatures["serving_default"]

        def run_savedmodel(pixels: np.ndarray) -> np.ndarray:
            (output,) = serve(tf.constant(pixels)).values()
            return np.asarray(output, dtype=np.float64)[:, 0]

        return run_savedmodel, f"TensorFlow {tf.__version__}"
    if fmt in QUANTIZABLE:
        return open_tflite(path)
    if fmt == "openvino":
        return open_openvino(path)
    return open_onnx(path)


def tflite_interpreter(path: Path) -> tuple[Any, str]:
    """LiteRT's interpreter for `path`, else TensorFlow's deprecated one; and its name."""
    from importlib import metadata

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        return (tf.lite.Interpreter(model_path=str(path)),
                "tf.lite.Interpreter (deprecated; LiteRT's ai-edge-litert is not installed)")
    return Interpreter(model_path=str(path)), f"LiteRT {metadata.version('ai-edge-litert')}"


def open_tflite(path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    import warnings

    with warnings.catch_warnings(), native_notes_filtered():  # LiteRT notices, the XNNPACK note
        warnings.simplefilter("ignore")
        interpreter, runtime = tflite_interpreter(path)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(pixels: np.ndarray) -> np.ndarray:
        with native_notes_filtered():
            interpreter.resize_tensor_input(inp["index"], list(pixels.shape))
            interpreter.allocate_tensors()
            interpreter.set_tensor(inp["index"], pixels)
            interpreter.invoke()
        return np.asarray(interpreter.get_tensor(out["index"]), dtype=np.float64)[:, 0]

    return run, runtime


def open_onnx(path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(f"checking an ONNX export needs onnxruntime, which is not installed; "
                         f"{HINTS['onnx']}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(pixels: np.ndarray) -> np.ndarray:
        (output,) = session.run(None, {name: pixels})
        return np.asarray(output, dtype=np.float64)[:, 0]

    return run, f"onnxruntime {onnxruntime.__version__}"


def open_openvino(path: Path) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """OpenVINO on the CPU at float32 (its default on CPUs with bf16 units is bf16: a deployment
    choice, not the export's faithfulness, which is what the check measures)."""
    try:
        import openvino
    except ImportError:
        raise ModelError(f"checking an OpenVINO export needs openvino, which is not installed; "
                         f"{HINTS['openvino']}") from None
    compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(pixels)[compiled.output(0)], dtype=np.float64)[:, 0]

    return run, f"OpenVINO {openvino.__version__}"


# --- what the check found ----------------------------------------------------------------------


def accuracy(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Share of images with a known label (>= 0) whose decision at `threshold` is right; NaN when
    none has a label."""
    known = labels >= 0
    if not known.any():
        return float("nan")
    return float(np.mean((probabilities[known] >= threshold) == (labels[known] == 1)))


def agreement(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """Share of images two models decide alike at `threshold`."""
    return float(np.mean((a >= threshold) == (b >= threshold))) if len(a) else float("nan")


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
    """Bytes on disk: a file (with OpenVINO's .bin beside its .xml), or a folder's files summed."""
    if path.is_file():
        return path.stat().st_size + sum(p.stat().st_size for p in companions(path) if p.is_file())
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
