"""`chimuf export MODEL.keras --format litert|tflite|savedmodel|onnx|openvino [--quantize KIND]`:
the model in formats other programs run.

Each export lands in --out (default: beside the model) with the model's classes and threshold
beside it (`<name>.classes.json`), and is checked at once: its probabilities on sample images
against the Keras model's, the largest difference printed. Sample images are the files given with
--check (read as `chimuf predict` reads them; a folder with one sub-folder per class gives labels,
so accuracies too), else 16 seeded random images (noise: enough to compare two programs, not to
judge a model).

With --quantize float16|dynamic|int8, a TFLite export is written twice, float and quantized
(`<name>.<kind>.tflite`), and the two are set side by side: size, accuracy on the labelled check
images, and how often they decide alike. int8 calibrates on --representative images (validation
photos; default: the check images, which then flatters it a little, said so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.errors import ConfigError, DataError
from chimuf.core.results import DEFAULT_THRESHOLD
from chimuf.data import sources
from chimuf.data.imagefile import model_array, read_image
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.modelfiles.export import QUANTIZABLE, ExportCheck, accuracy, agreement, export_model
from chimuf.tools.evaluate_folder import folder_classes

if TYPE_CHECKING:
    from chimuf.core.config import AuditConfig, ModelFilesConfig
    from chimuf.core.console import Console

RANDOM_SAMPLES = 16


@dataclass
class Samples:
    """Images to check exports on: uint8 (N, S, S, 3), their labels (-1: not known), and in words."""

    images: np.ndarray
    labels: np.ndarray
    what: str


def export_files(model_path: Path, formats: list[str], out_dir: Path | None, check_files: list[Path],
                 audit_cfg: AuditConfig, console: Console, limits: ModelFilesConfig | None = None,
                 quantize: str = "", representative_files: list[Path] | None = None,
                 ) -> tuple[list[ExportCheck], Samples]:
    """Export the model at `model_path` as each of `formats` (and, with `quantize`, each TFLite one
    quantized too) and check each export; `limits` bound what the model file may hold."""
    if quantize and not set(formats) & set(QUANTIZABLE):
        raise ConfigError(f"--quantize {quantize} is for TFLite/LiteRT exports; add --format litert")
    model = modelfile.load_model(model_path, limits)
    size = modelfile.input_size(model)
    samples = sample_images(model_path, check_files, size, audit_cfg, console)
    representative = None
    if quantize == "int8":
        representative = calibration_images(representative_files or [], samples, size, audit_cfg, console)
    target = out_dir or Path(model_path).parent
    checks = []
    for fmt in formats:
        console.info(f"exporting {model_path} as {fmt} ...")
        checks.append(export_model(model_path, fmt, target, samples.images, limits))
        if quantize and fmt in QUANTIZABLE:
            console.info(f"exporting {model_path} as {fmt}, quantized {quantize} ...")
            checks.append(export_model(model_path, fmt, target, samples.images, limits, quantize,
                                       representative))
    console.info(f"checked on {samples.what}")
    return checks, samples


def calibration_images(files: list[Path], samples: Samples, size: int, audit_cfg: AuditConfig,
                       console: Console) -> np.ndarray:
    """int8's calibration images: --representative's, else the check images (said so)."""
    if files:
        return sample_images(None, files, size, audit_cfg, console).images
    if samples.what.startswith(f"{RANDOM_SAMPLES} random"):
        raise ConfigError("--quantize int8 calibrates on real photos: give --representative IMAGE|DIR "
                          "(validation photos) or --check IMAGE|DIR")
    console.warn("int8 calibrated on the --check images themselves, so their accuracy flatters it a "
                 "little; give validation photos with --representative for an honest figure")
    return samples.images


def sample_images(model_path: Path | None, files: list[Path], size: int, audit_cfg: AuditConfig,
                  console: Console) -> Samples:
    """The images to compare exports with the model on. A folder given is walked as `chimuf
    evaluate` walks one (one sub-folder per class, the model's classes): its images get labels."""
    if not files:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (RANDOM_SAMPLES, size, size, 3), dtype=np.uint8)
        return Samples(pixels, np.full(RANDOM_SAMPLES, -1),
                       f"{RANDOM_SAMPLES} random images (give real ones with --check IMAGE|DIR...)")
    arrays, labels = [], []
    for path, label in labelled_files(model_path, files, console):
        decoded = read_image(path, audit_cfg)
        if decoded.image is None:
            console.warn(f"not used for the check: `{path}`: {decoded.check.reason}")
            continue
        arrays.append(model_array(decoded.image, size))
        labels.append(label)
    if not arrays:
        raise DataError(f"none of the {len(files)} --check path(s) holds a usable image; give JPEG, PNG, "
                        "BMP, GIF or WebP files, or leave --check out to use random images")
    labelled = sum(1 for label in labels if label >= 0)
    return Samples(np.stack(arrays), np.array(labels),
                   f"{len(arrays)} image(s) given with --check, {labelled} of them labelled by their folder")


def labelled_files(model_path: Path | None, paths: list[Path], console: Console) -> list[tuple[Path, int]]:
    """Each image file with its label: a folder's by its class sub-folder, a file given alone -1."""
    found: list[tuple[Path, int]] = []
    for path in paths:
        if not path.is_dir():
            found.append((path, -1))
            continue
        root = sources.check_folder(path)
        listing = sources.list_folder(root)
        if model_path is None:  # calibration images: labels unused
            found += [(root / rel, -1) for rel, _ in listing.files]
            continue
        sidecar = modelfile.read_sidecar(model_path)
        classes, _ = folder_classes(model_path, sidecar.classes if sidecar else None, root,
                                    listing.classes, console)
        found += [(root / rel, classes.index(label)) for rel, label in listing.files]
    return found


def threshold_of(model_path: Path) -> float:
    sidecar = modelfile.read_sidecar(model_path)
    return sidecar.threshold if sidecar is not None else DEFAULT_THRESHOLD


def format_checks(checks: list[ExportCheck], samples: Samples | None = None,
                  threshold: float = DEFAULT_THRESHOLD) -> str:
    """One line per export: format, quantization, size, the largest difference from the Keras
    model, accuracy on the labelled check images (at `threshold`), and the runtime that ran it."""
    labels = samples.labels if samples is not None else np.array([])
    lines = [f"{'format':<10}{'quantized':<10}{'size':>9}{'max |diff|':>12}{'accuracy':>10}"
             f"{'agrees':>8}  runtime, path"]
    if checks and len(labels):
        keras_accuracy = accuracy(checks[0].keras_probabilities, labels, threshold)
        lines.append(f"{'keras':<10}{'-':<10}{'':>9}{'':>12}{percent(keras_accuracy):>10}{'':>8}  "
                     "the float32 Keras model")
    for c in checks:
        saved = (f"  (vs the saved mixed-precision model: {c.max_abs_difference_saved:.1e})"
                 if abs(c.max_abs_difference_saved - c.max_abs_difference) > 1e-9 else "")
        score = accuracy(c.probabilities, labels, threshold) if len(labels) else math.nan
        agrees = agreement(c.probabilities, c.keras_probabilities, threshold)
        lines.append(f"{c.format:<10}{c.quantization or 'no':<10}{c.size_bytes / 2**20:>7.2f}MB"
                     f"{c.max_abs_difference:>12.1e}{percent(score):>10}{percent(agrees):>8}  "
                     f"{c.runtime}, {c.path}{saved}")
    return "\n".join(lines)


def percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"
