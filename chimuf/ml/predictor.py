"""A saved model as the single steps use it: opened safely, with its class names, scoring pixels.

Every command that takes a model file (`chimuf predict`, `predict --explain`, `chimuf evaluate`)
and every stage that rescores a saved training goes through here, so a model is always opened
the same way (chimuf.ml.modelfile's checks), its class names come from the same sidecar file, and
an image's class is decided by the same rule (chimuf.core.results.predicted_id).

    files → read_image (verdict, RGB; as the audit) → model_array (S, S, 3) uint8 (as the cache)
      → batches → model → P(classes[1])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.results import DEFAULT_THRESHOLD, predicted_id
from chimuf.data.imagefile import model_array, read_image
from chimuf.ml import modelfile
from chimuf.ml.pipeline import make_dataset

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import AuditConfig, ModelFilesConfig
    from chimuf.core.console import Console
    from chimuf.data.cache import ImageSet

BATCH = 64  # images decoded and predicted at a time: bounds memory on large folders


@dataclass
class Classifier:
    """A loaded model, its class names (None when no sidecar says them) and its threshold."""

    path: Path
    model: keras.Model
    classes: list[str] | None  # index i = label i; the sigmoid gives P(classes[1])
    threshold: float = DEFAULT_THRESHOLD

    @property
    def image_size(self) -> int:
        return modelfile.input_size(self.model)

    def decide(self, probability: float) -> int:
        """The class id an image with P(classes[1]) = `probability` gets."""
        return predicted_id(probability, self.threshold)


def load_classifier(path: Path, limits: ModelFilesConfig | None = None) -> Classifier:
    """The model at `path`, checked (chimuf.ml.modelfile, within `limits`), with the class names
    saved beside it."""
    model = modelfile.load_model(path, limits)
    return Classifier(Path(path), model, modelfile.read_classes(path))


def numbered_classes(classifier: Classifier, console: Console) -> list[str]:
    """The classifier's class names, or "0" and "1" (said once) when no sidecar names them."""
    if classifier.classes is not None:
        return classifier.classes
    console.warn(f"no `{modelfile.classes_path(classifier.path).name}` beside the model, so its class "
                 "names are unknown; labels are shown as 0 and 1 (the sigmoid gives P(1))")
    return ["0", "1"]


# --- scoring -----------------------------------------------------------------------------------


@dataclass
class Scored:
    """One file through the model: P(classes[1]), or the reason it could not be read."""

    path: Path
    probability: float | None  # P(classes[1]); None when unreadable
    error: str = ""


def score_files(model: keras.Model, files: list[Path], audit_cfg: AuditConfig,
                console: Console, description: str = "predicting") -> list[Scored]:
    """P(classes[1]) of each file, reading and predicting BATCH files at a time.

    Each file is opened exactly as the audit opens it (format by content, size limits, full
    decode, conversion to 8-bit RGB) and resized exactly as the cache resizes it, so a photo gets
    the same pixels here as in the study; a file the audit would reject carries its reason.
    """
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
                readable = iter(probabilities_of(model, np.stack(pixels)).tolist())
                for item in results:
                    if item.probability is not None:
                        item.probability = next(readable)
            scored += results
            progress.update(len(chunk))
    return scored


def probabilities_of(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    """P(classes[1]) of uint8 images (N, S, S, 3) in one call: float64 (N,)."""
    batch = pixels.astype(np.float32)  # 0-255 as in training: the model rescales inside
    return np.asarray(model(batch, training=False), dtype=np.float64)[:, 0]


def predict_rows(model: keras.Model, images: ImageSet, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """P(classes[1]) of image-cache rows `rows`, in that order: float64 (len(rows),)."""
    if len(rows) == 0:
        return np.zeros(0)
    dataset = make_dataset(images.images, images.labels, rows, batch_size, shuffle=False, seed=0)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)[:, 0]
