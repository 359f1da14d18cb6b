"""`chimuf predict MODEL IMAGE...`: the class and its probability for each image file.

Each file is opened exactly as the audit opens it (chimuf.imagefile: format by content, size
limits, full decode, conversion to 8-bit RGB) and resized exactly as the cache resizes it
(`imagefile.model_array`), so a photo gets the same pixels here as in the study. A file the audit
would reject gets its reason in `error`, and the other files are still predicted.

    files → read_image (verdict, RGB) → model_array (S, S, 3) uint8 → batches → model → P(classes[1])
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.errors import ConfigError
from chimuf.core.results import to_jsonable
from chimuf.data.imagefile import model_array, read_image
from chimuf.ml import modelfile

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import AuditConfig
    from chimuf.core.console import Console

BATCH = 64  # images decoded and predicted at a time: bounds memory on large folders
FORMATS = ("table", "json", "csv")


@dataclass
class Prediction:
    path: str  # as given on the command line
    label: str  # predicted class; "" when the file could not be used
    probability: float  # the model's probability of `label`; NaN when the file could not be used
    error: str = ""  # why the file could not be used; "" when it was predicted


@dataclass
class Scored:
    """One file through the model: P(classes[1]), or the reason it could not be read."""

    path: Path
    probability: float | None  # P(classes[1]); None when unreadable
    error: str = ""


def predict_files(model_path: Path, files: list[Path], audit_cfg: AuditConfig,
                  console: Console) -> list[Prediction]:
    """One Prediction per file, in the order given; unreadable files carry their reason."""
    model = modelfile.load_model(model_path)
    classes = modelfile.read_classes(model_path)
    if classes is None:
        console.warn(f"no `{modelfile.classes_path(model_path).name}` beside the model, so its class "
                     "names are unknown; labels are shown as 0 and 1 (the sigmoid gives P(1))")
        classes = ["0", "1"]
    scored = score_files(model, [Path(f) for f in files], audit_cfg, console)
    return [as_prediction(s, classes) for s in scored]


def as_prediction(scored: Scored, classes: list[str]) -> Prediction:
    if scored.probability is None:
        return Prediction(str(scored.path), "", float("nan"), scored.error)
    p = scored.probability
    if p > 0.5:  # the rule Keras' binary accuracy applies (chimuf.metrics)
        return Prediction(str(scored.path), classes[1], p)
    return Prediction(str(scored.path), classes[0], 1.0 - p)


def score_files(model: keras.Model, files: list[Path], audit_cfg: AuditConfig,
                console: Console, description: str = "predicting") -> list[Scored]:
    """P(classes[1]) of each file, reading and predicting BATCH files at a time."""
    size = modelfile.input_size(model)
    scored: list[Scored] = []
    with console.progress(description, total=len(files), unit="images") as progress:
        for start in range(0, len(files), BATCH):
            chunk = files[start:start + BATCH]
            pixels, results = [], []
            for path in chunk:
                decoded = read_image(path, audit_cfg)
                if decoded.image is None:
                    results.append(Scored(path, None, decoded.check.reason))
                    continue
                pixels.append(model_array(decoded.image, size))  # (S, S, 3) uint8
                results.append(Scored(path, 0.0))
            if pixels:
                batch = np.stack(pixels).astype(np.float32)  # (B, S, S, 3), 0-255 as in training
                probabilities = np.asarray(model(batch, training=False), dtype=np.float64)[:, 0]
                readable = iter(probabilities.tolist())
                for item in results:
                    if item.probability is not None:
                        item.probability = next(readable)
            scored += results
            progress.update(len(chunk))
    return scored


# --- showing -----------------------------------------------------------------------------------


def format_predictions(predictions: list[Prediction], fmt: str) -> str:
    """The predictions as an aligned table, a JSON list, or CSV with a header row."""
    if fmt not in FORMATS:
        raise ConfigError(f"output format must be one of {', '.join(FORMATS)}; got `{fmt}`")
    if fmt == "json":
        return json.dumps(to_jsonable(predictions), indent=1, ensure_ascii=False, allow_nan=False)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label", "probability", "error"])
        for p in predictions:
            writer.writerow([p.path, p.label, "" if p.error else f"{p.probability:.6f}", p.error])
        return buffer.getvalue().rstrip("\n")
    return format_table(predictions)


def format_table(predictions: list[Prediction]) -> str:
    width = max([len("image")] + [len(p.path) for p in predictions])
    label_width = max([len("class")] + [len(p.label) for p in predictions])
    lines = [f"{'image':<{width}}  {'class':<{label_width}}  probability"]
    for p in predictions:
        if p.error:
            lines.append(f"{p.path:<{width}}  {'-':<{label_width}}  error: {p.error}")
        else:
            lines.append(f"{p.path:<{width}}  {p.label:<{label_width}}  {p.probability:.3f}")
    return "\n".join(lines)
