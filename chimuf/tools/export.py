"""`chimuf export MODEL.keras --format tflite|savedmodel|onnx`: the model in formats other programs run.

Each export lands in --out (default: beside the model) with the model's classes and threshold
beside it (`<name>.classes.json`), and is checked at once: its probabilities on sample images
against the Keras model's, the largest difference printed. Sample images are the files given with
--check (read as `chimuf predict` reads them), else 16 seeded random images (noise: enough to
compare two programs, not to judge a model).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.errors import DataError
from chimuf.data.imagefile import model_array, read_image
from chimuf.ml import modelfile
from chimuf.ml.export import ExportCheck, export_model

if TYPE_CHECKING:
    from chimuf.core.config import AuditConfig, ModelFilesConfig
    from chimuf.core.console import Console

RANDOM_SAMPLES = 16


def export_files(model_path: Path, formats: list[str], out_dir: Path | None, check_files: list[Path],
                 audit_cfg: AuditConfig, console: Console,
                 limits: ModelFilesConfig | None = None) -> list[ExportCheck]:
    """Export the model at `model_path` as each of `formats` and check each export; `limits`
    bound what the model file may hold (chimuf.ml.modelfile)."""
    size = modelfile.input_size(modelfile.load_model(model_path, limits))
    samples, what = sample_images(check_files, size, audit_cfg, console)
    target = out_dir or Path(model_path).parent
    checks = []
    for fmt in formats:
        console.info(f"exporting {model_path} as {fmt} ...")
        checks.append(export_model(model_path, fmt, target, samples, limits))
    console.info(f"checked on {what}")
    return checks


def sample_images(files: list[Path], size: int, audit_cfg: AuditConfig,
                  console: Console) -> tuple[np.ndarray, str]:
    """uint8 (N, S, S, 3) images to compare the export with the model on, and what they are."""
    if not files:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (RANDOM_SAMPLES, size, size, 3), dtype=np.uint8)
        return pixels, f"{RANDOM_SAMPLES} random images (give real ones with --check IMAGE...)"
    arrays = []
    for path in files:
        decoded = read_image(path, audit_cfg)
        if decoded.image is None:
            console.warn(f"not used for the check: `{path}`: {decoded.check.reason}")
            continue
        arrays.append(model_array(decoded.image, size))
    if not arrays:
        raise DataError(f"none of the {len(files)} --check file(s) is a usable image; give JPEG, PNG, "
                        "BMP, GIF or WebP files, or leave --check out to use random images")
    return np.stack(arrays), f"{len(arrays)} image file(s) given with --check"


def format_checks(checks: list[ExportCheck]) -> str:
    """One line per export: format, path, size and the largest difference from the Keras model."""
    lines = [f"{'format':<11}{'max |diff|':>12}{'size':>10}  path"]
    for c in checks:
        saved = (f"  (vs the saved bf16 model: {c.max_abs_difference_saved:.1e})"
                 if abs(c.max_abs_difference_saved - c.max_abs_difference) > 1e-9 else "")
        lines.append(f"{c.format:<11}{c.max_abs_difference:>12.1e}{c.size_bytes / 2**20:>8.1f}MB  "
                     f"{c.path}{saved}")
    return "\n".join(lines)
