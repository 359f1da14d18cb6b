"""A saved model as the single steps use it: opened safely, with its class names, scoring pixels.

Every command that takes a model file (`chimuf predict`, `predict --explain`, `chimuf evaluate`)
and every stage that rescores a saved training goes through here, so a model is always opened
the same way (chimuf.ml.modelfiles.modelfile's checks), its class names come from the same sidecar file, and
an image's class is decided by the same rule (chimuf.core.results.predicted_id).

    files → read_image (verdict, RGB; as the audit) → model_array (S, S, 3) uint8 (as the cache)
      → batches → model → P(classes[1])

A model file of a few hundred kB can ask for a huge activation (UpSampling to 512 px × 1024
channels is 2**28 values per image, 1 GiB in float32): before any image is fed, the batch is
lowered so that its largest activation fits PREDICT_MEMORY_BYTES, and a model whose single image
does not fit is refused (prediction_batch; the largest layer output comes from the model's config,
chimuf.ml.modelfiles.modelsize).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chimuf.core.errors import ModelError
from chimuf.core.results import DEFAULT_THRESHOLD, predicted_id
from chimuf.data.imagefile import model_array, read_image
from chimuf.ml.modelfiles import modelfile, modelsize
from chimuf.ml.training.pipeline import make_dataset

if TYPE_CHECKING:
    import keras

    from chimuf.core.config import AuditConfig, ModelFilesConfig
    from chimuf.core.console import Console
    from chimuf.data.cache import ImageSet

BATCH = 64  # images decoded and predicted at a time: bounds memory on large folders
PREDICT_MEMORY_BYTES = 2 * 2**30  # a prediction batch's largest activation, input and output alive
LIVE_COPIES = 2  # a layer's input and its output are alive at once
BYTES_PER_VALUE = 4  # float32


@dataclass
class Classifier:
    """A loaded model, its class names (None when no sidecar says them) and its threshold; with
    `others`, an ensemble whose probabilities are averaged; with `flips`, each image and its mirror."""

    path: Path
    model: keras.Model
    classes: list[str] | None  # index i = label i; the sigmoid gives P(classes[1])
    threshold: float = DEFAULT_THRESHOLD
    threshold_source: str = "the default"  # where the threshold came from, in words
    others: list[keras.Model] = field(default_factory=list)  # ensemble members after the first
    flips: bool = False  # test-time augmentation: average with the left-right mirror

    @property
    def image_size(self) -> int:
        return modelfile.input_size(self.model)

    def decide(self, probability: float) -> int:
        """The class id an image with P(classes[1]) = `probability` gets."""
        return predicted_id(probability, self.threshold)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """P(classes[1]) of uint8 images (N, S, S, 3): float64 (N,), averaged over the models
        (and mirrors)."""
        return averaged_probabilities([self.model, *self.others], pixels, self.flips)


def load_classifier(path: Path, threshold: float | None = None, ensemble: Sequence[Path] = (),
                    flips: bool = False, limits: ModelFilesConfig | None = None) -> Classifier:
    """The model at `path`, checked (chimuf.ml.modelfiles.modelfile, within `limits`), with the class names
    and threshold saved beside it; `threshold` (e.g. `--threshold`) overrides the saved one. With
    `ensemble`, those models too, averaged with the first (they must take the same images and,
    where they say, have the same classes); an ensemble decides at 0.5 unless given a threshold,
    since a saved threshold was chosen for its one model."""
    model = modelfile.load_model(path, limits)
    sidecar = modelfile.read_sidecar(path)
    classes = None if sidecar is None else sidecar.classes
    others = [load_member(member, model, classes, limits) for member in ensemble]
    if threshold is not None:
        return Classifier(Path(path), model, classes, threshold, "given with --threshold", others, flips)
    if others or sidecar is None or not sidecar.threshold_rule:
        return Classifier(Path(path), model, classes, others=others, flips=flips)
    source = f"from {modelfile.classes_path(path).name}: {sidecar.threshold_rule}"
    return Classifier(Path(path), model, classes, sidecar.threshold, source, others, flips)


def load_member(path: Path, first: keras.Model, classes: list[str] | None,
                limits: ModelFilesConfig | None) -> keras.Model:
    """One more model of an ensemble: it must fit with the first."""
    model = modelfile.load_model(path, limits)
    if modelfile.input_size(model) != modelfile.input_size(first):
        raise ModelError(f"ensemble member `{path}` takes {modelfile.input_size(model)}-pixel images, the "
                         f"first model {modelfile.input_size(first)}-pixel ones; an ensemble needs one size")
    theirs = modelfile.read_classes(path)
    if theirs is not None and classes is not None and theirs != classes:
        raise ModelError(f"ensemble member `{path}` has classes {theirs}, the first model {classes}; "
                         "an ensemble averages one probability, of the same class")
    return model


def describe_threshold(classifier: Classifier) -> str:
    """`threshold 0.43 (from final.classes.json: maximum accuracy on the validation split)`"""
    return f"threshold {classifier.threshold:g} ({classifier.threshold_source})"


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


def score_files(classifier: Classifier, files: list[Path], audit_cfg: AuditConfig,
                console: Console, description: str = "predicting") -> list[Scored]:
    """P(classes[1]) of each file, reading and predicting BATCH files at a time.

    Each file is opened exactly as the audit opens it (format by content, size limits, full
    decode, conversion to 8-bit RGB) and resized exactly as the cache resizes it, so a photo gets
    the same pixels here as in the study; a file the audit would reject carries its reason.
    """
    size = classifier.image_size
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
                readable = iter(classifier.probabilities(np.stack(pixels)).tolist())
                for item in results:
                    if item.probability is not None:
                        item.probability = next(readable)
            scored += results
            progress.update(len(chunk))
    return scored


def probabilities_of(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    """P(classes[1]) of uint8 images (N, S, S, 3), at most BATCH at a time and fewer when the
    model's activations ask for it (prediction_batch): float64 (N,)."""
    out = []
    step = prediction_batch(model) if len(pixels) else BATCH
    for start in range(0, len(pixels), step):
        batch = pixels[start:start + step].astype(np.float32)  # 0-255: the model rescales inside
        out.append(np.asarray(run_batch(model, batch), dtype=np.float64)[:, 0])
    return np.concatenate(out) if out else np.zeros(0)


def run_batch(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    return model(batch, training=False)


def prediction_batch(model: keras.Model, budget: int | None = None) -> int:
    """Images per prediction batch so that the model's largest activation, for the whole batch,
    fits `budget` bytes (PREDICT_MEMORY_BYTES); ModelError when not even one image fits."""
    budget = PREDICT_MEMORY_BYTES if budget is None else budget
    per_image = largest_activation(model) * BYTES_PER_VALUE * LIVE_COPIES
    fits = budget // max(per_image, 1)
    if fits < 1:
        raise ModelError(
            f"model `{model.name}` computes {per_image // LIVE_COPIES:,} bytes of activations per image "
            f"in one layer, more than the {budget:,}-byte prediction budget allows; refused before any "
            "image was fed (a model of chimuf's needs far less)"
        )
    return int(min(BATCH, fits))


def largest_activation(model: keras.Model) -> int:
    """Values per image of the largest tensor `model` computes, from its config (modelsize).

    A layer modelsize cannot size (a user's own architecture, which the study loads again by the
    digest it recorded, chimuf.ml.modelfiles.modelfile.vouch) is measured on the model Keras has
    built: its layers' output shapes."""
    import json

    import keras

    cached = getattr(model, "_chimuf_largest_activation", None)
    if cached is None:
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(model), default=str))
        try:
            cached = modelsize.estimate(config).largest_tensor
        except ModelError:
            cached = built_largest_activation(model)
        model._chimuf_largest_activation = cached  # the config never changes once loaded
    return int(cached)


def built_largest_activation(model: keras.Model) -> int:
    """Values per image of the largest output of any layer of a built model."""
    import keras

    largest = 1
    for layer in model.layers:
        for output in keras.tree.flatten(layer.output):
            values = np.prod([d for d in output.shape[1:] if d is not None], dtype=np.int64)
            largest = max(largest, int(values))
    return largest


def averaged_probabilities(models: Sequence[keras.Model], pixels: np.ndarray, flips: bool) -> np.ndarray:
    """The mean P(classes[1]) of uint8 images (N, S, S, 3) over `models`, and over each image and
    its left-right mirror with `flips` (test-time augmentation): float64 (N,)."""
    views = [pixels, pixels[:, :, ::-1, :]] if flips else [pixels]  # (N, S, S, 3): W is axis 2
    return np.mean([probabilities_of(model, view) for model in models for view in views], axis=0)


def predict_rows(model: keras.Model, images: ImageSet, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """P(classes[1]) of image-cache rows `rows`, in that order: float64 (len(rows),)."""
    if len(rows) == 0:
        return np.zeros(0)
    dataset = make_dataset(images.images, images.labels, rows, batch_size, shuffle=False, seed=0)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)[:, 0]
