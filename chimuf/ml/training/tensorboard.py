"""TensorBoard logs of every training, fold and tuning trial, one point per finished epoch.

    RUN/tensorboard/<stage>/<name>/train/        epoch_loss, epoch_accuracy, epoch_auc,
                                                 epoch_learning_rate, epoch_images_per_s
    RUN/tensorboard/<stage>/<name>/validation/   epoch_loss, epoch_accuracy, epoch_auc
    RUN/tensorboard/tune/                        the HParams view: each trial's values against
                                                 its validation accuracy and loss

Keras' TensorBoard callback would write a point at the end of each epoch, before chimuf's
checkpoint of that epoch is saved: a training killed in between would redo the epoch and write
its step twice. Here an epoch is written only after its checkpoint, from the history, and a marker
beside the event files says which epochs are in them, so a resumed training continues the same
curve without a duplicate step (steps are 1-based epochs, as in the report). A training that
starts over (no checkpoint to resume from, or other settings) starts its log over too.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chimuf.core.files import atomic_write_text
from chimuf.core.results import EpochRecord

MARKER = ".chimuf-epochs"  # JSON {"written": last epoch in the event files}; TensorBoard ignores it
TRAIN_TAGS = {"loss": "epoch_loss", "accuracy": "epoch_accuracy", "auc": "epoch_auc",
              "learning_rate": "epoch_learning_rate", "images_per_s": "epoch_images_per_s"}
VALIDATION_TAGS = {"val_loss": "epoch_loss", "val_accuracy": "epoch_accuracy", "val_auc": "epoch_auc"}


class EpochLog:
    """The TensorBoard log of one training: `write(history)` adds the epochs not yet in it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._writers: dict[str, Any] = {}

    def written(self) -> int:
        try:
            return int(json.loads((self.folder / MARKER).read_text())["written"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return 0

    def reset(self) -> None:
        """Start the log over: the training starts from its first epoch."""
        self.close()
        if self.folder.exists():
            shutil.rmtree(self.folder)

    def write(self, history: Sequence[EpochRecord]) -> None:
        """Write every epoch of `history` after the last one written, then mark them written."""
        import tensorflow as tf

        done = self.written()
        pending = [record for record in history if record.epoch > done]
        if not pending:
            return
        for part, tags in (("train", TRAIN_TAGS), ("validation", VALIDATION_TAGS)):
            writer = self.writer(part)
            with writer.as_default():
                for record in pending:
                    for field, tag in tags.items():
                        value = getattr(record, field)
                        if isinstance(value, (int, float)) and math.isfinite(value):
                            tf.summary.scalar(tag, float(value), step=record.epoch)
            writer.flush()
        atomic_write_text(self.folder / MARKER, json.dumps({"written": pending[-1].epoch}) + "\n")

    def writer(self, part: str) -> Any:
        import tensorflow as tf

        if part not in self._writers:
            self._writers[part] = tf.summary.create_file_writer(str(self.folder / part))
        return self._writers[part]

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def write_hparams_config(folder: Path, space: Mapping[str, Sequence[float]]) -> None:
    """The HParams view's columns at the search's root: every hyperparameter with the values the
    search may take, and the validation accuracy and loss as the metrics."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    hparams = [hp.HParam(name, hp.Discrete(list(values))) for name, values in space.items()]
    metrics = [hp.Metric("epoch_accuracy", group="validation", display_name="val_accuracy"),
               hp.Metric("epoch_loss", group="validation", display_name="val_loss")]
    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default():
        hp.hparams_config(hparams=hparams, metrics=metrics)
    writer.close()


def write_trial_hparams(folder: Path, values: Mapping[str, float], trial_id: str) -> None:
    """One trial's row of the HParams view: its values, in the trial's own log folder."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default():
        hp.hparams(dict(values), trial_id=f"trial_{trial_id}")
    writer.close()
