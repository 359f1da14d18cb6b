"""The study config: every default of the paper protocol, in one place.

Defaults are the paper's protocol (paper.txt sections 3-8). A profile (`paper`, `quick`, `smoke`)
overrides a few of them; a TOML file overrides the profile; command-line flags override the file.
Unknown keys and bad values are errors that name the key and say what is allowed.

    [train]
    epochs = 30          # overrides train.epochs of the chosen profile

`chimuf config` prints the effective config as commented TOML.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from chimuf.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Check:
    """What a config value must be: a test, and the words an error uses for it."""

    ok: Callable[[Any], bool]
    allowed: str


# Upper bounds a typo must not pass: 10 000 epochs is 200× the paper's; Adam or AdamW above a
# learning rate of 1 only diverges.
MAX_EPOCHS = 10_000
MAX_LEARNING_RATE = 1.0


def epoch_count(low: int = 1) -> Check:
    return Check(lambda v: low <= v <= MAX_EPOCHS, f"a whole number from {low} to {MAX_EPOCHS:,}")


def learning_rate_check() -> Check:
    return Check(lambda v: 0 < v <= MAX_LEARNING_RATE, f"above 0 and at most {MAX_LEARNING_RATE:g}")


def at_least(low: float) -> Check:
    return Check(lambda v: v >= low, f"at least {low:g}")


def non_negative(words: str = "0 or more") -> Check:
    return Check(lambda v: v >= 0, words)


def positive(words: str = "positive") -> Check:
    return Check(lambda v: v > 0, words)


def between(low: float, high: float, *, high_inclusive: bool = True, low_inclusive: bool = True,
            unit: str = "") -> Check:
    def ok(v: Any) -> bool:
        return (v >= low if low_inclusive else v > low) and (v <= high if high_inclusive else v < high)

    if low_inclusive and high_inclusive:
        words = f"between {low:g} and {high:g}"
    elif not low_inclusive and not high_inclusive:
        words = f"between {low:g} and {high:g} (exclusive)"
    else:
        words = f"within {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
    return Check(ok, f"{words}{' ' + unit if unit else ''}")


def one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, ", ".join(f"'{c}'" for c in choices[:-1]) + f" or '{choices[-1]}'")


def non_empty_subset(*choices: Any) -> Check:
    listed = ", ".join(repr(c) if isinstance(c, str) else str(c) for c in choices)
    return Check(lambda v: len(v) > 0 and set(v) <= set(choices), f"a non-empty list of {listed}")


# The largest search a config may ask for. Filters and units: 4x the paper's largest (256); the
# models such a search builds must still fit `model_files.max_params`, which the study checks
# before training.
# Values per hyperparameter: the search space is listed value by value (chimuf.tuning.space), so a
# step of 1e-12 must not ask for 5e11 of them.
MAX_SEARCH_COUNT = 1024
MAX_SEARCH_VALUES = 1000


def search_range(rate: bool = False) -> Check:
    """[min, max, step] of one hyperparameter of the search (min <= max, step > 0, at most
    MAX_SEARCH_VALUES values; counts at most MAX_SEARCH_COUNT)."""
    def ok(v: Any) -> bool:
        if len(v) != 3 or not (v[0] <= v[1] and v[2] > 0):
            return False
        if (v[1] - v[0]) / v[2] >= MAX_SEARCH_VALUES:
            return False
        return (v[0] >= 0 and v[1] < 1) if rate else v[0] >= 1 and v[1] <= MAX_SEARCH_COUNT

    words = f"[min, max, step] with min <= max, step > 0 and at most {MAX_SEARCH_VALUES} values"
    return Check(ok, words + (", within [0, 1)" if rate else f", within [1, {MAX_SEARCH_COUNT}]"))


def seed_range() -> Check:
    """Seeds feed numpy's and TensorFlow's generators, which take unsigned 32-bit seeds."""
    return Check(lambda v: 0 <= v < 2**32, "a whole number from 0 to 4294967295 (2**32 - 1)")


def opt(default: Any, help: str, check: Check | None = None, *, changes_results: bool = True) -> Any:
    """A config field with its one-line explanation (shown by `chimuf config`) and what its
    value must be (checked by `check_config`; the type is checked as the value is read).

    `changes_results=False` marks a setting that changes no number (how long to wait, where to
    report): a stage's fingerprint leaves it out (chimuf.core.engine), so changing it redoes nothing.
    """
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"help": help, "check": check, "fingerprinted": changes_results})


# --- the allowed values of the settings that name a choice (the CLI's choices come from here) ---

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")
REPORT_FORMATS = ("html", "pdf")
REPORT_ENGINES = ("auto", "quarto", "pandoc")
SCHEDULES = ("cosine", "constant")
THRESHOLD_RULES = ("accuracy", "balanced_accuracy", "f1", "youden")  # chimuf.stats.metrics reads it
CLASS_WEIGHTS = ("none", "balanced")  # chimuf.ml.training.fit reads it


# --- one dataclass per stage -------------------------------------------------------------------


# The largest image side a study may use. The paper uses 128; 512 keeps the decoded cache of the
# Kaggle data (about 6 000 photos) near 4.7 GB (N x side^2 x 3 bytes; at 1024 it would be 19 GB), and
# covers the photos' own sizes. Model files whose input is larger are refused (ml.modelfiles.modelfile).
MAX_IMAGE_SIZE = 512


@dataclass(frozen=True)
class DataConfig:
    dir: str = opt("", "data folder, one sub-folder per class; '' means --data, CHIMUF_DATA, data/")
    image_size: int = opt(128, "images are resized to image_size x image_size pixels, RGB",
                          between(16, MAX_IMAGE_SIZE, unit="pixels"))
    max_per_class: int = opt(0, "use at most this many files per class (0 = all); for smoke runs",
                             non_negative("0 (all) or more"))
    cache_dir: str = opt("", "where decoded images are cached; '' means $CHIMUF_CACHE_DIR, else runs/cache")
    labels_csv: str = opt("", "a labels CSV (path,label[,split][,group], paths relative to its folder) "
                          "instead of class folders; '' means none (docs/data.md)")
    test_dir: str = opt("", "a given test folder (same class folders): the study evaluates on exactly it "
                        "and splits only the rest; '' means split a test off the data")
    val_dir: str = opt("", "a given validation folder (same class folders); '' means split one off")
    drop_test_duplicates: bool = opt(False, "leave out of training the near duplicates of the given "
                                     "test set's images (the audit lists them either way)")
    positive: str = opt("", "the positive class (the sigmoid gives its probability; ROC, threshold and "
                        "recall are about it); '' means the second class in name order")


@dataclass(frozen=True)
class AuditConfig:
    min_side: int = opt(32, "images with a side shorter than this (pixels) are rejected", at_least(1))
    max_pixels: int = opt(50_000_000, "images with more pixels are rejected unread (decompression bombs)",
                          at_least(1))
    max_file_mb: float = opt(50.0, "files larger than this (MiB) are rejected unread",
                             positive("a positive number of MiB"))
    near_duplicate_distance: int = opt(
        4, "two images whose 64-bit perceptual hashes differ in at most this many bits are near duplicates",
        between(0, 32, unit="bits"),
    )


@dataclass(frozen=True)
class SplitConfig:
    test_fraction: float = opt(0.2, "share of all usable images held out for the test (paper 3.1)",
                               between(0, 1, low_inclusive=False, high_inclusive=False))
    validation_fraction: float = opt(0.125, "share of the remaining images used for validation (paper 3.1)",
                                     between(0, 1, low_inclusive=False, high_inclusive=False))
    small_split_half_width: float = opt(
        0.05, "flag a validation or test split on which a 95 % interval of an accuracy can be wider "
        "than +- this (0.05: 5 points; at accuracy 0.5, the widest)",
        between(0, 0.5, low_inclusive=False),
    )


SHIFT = between(0, 1, high_inclusive=False)


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's ImageDataGenerator settings (paper 3.2), drawn per image (chimuf.ml.training.augment)."""

    rotation_range: float = opt(20.0, "random rotation, +- degrees", between(0, 180, unit="degrees"))
    width_shift_range: float = opt(0.2, "random horizontal shift, fraction of the width", SHIFT)
    height_shift_range: float = opt(0.2, "random vertical shift, fraction of the height", SHIFT)
    shear_range: float = opt(0.2, "random shear intensity (fraction, as Keras' RandomShear)", SHIFT)
    zoom_range: float = opt(0.2, "random zoom, +- fraction", SHIFT)
    channel_shift_range: float = opt(20.0, "random per-channel shift, +- pixel values (0-255 scale)",
                                     between(0, 255))
    horizontal_flip: bool = opt(True, "random left-right flip")
    augment_validation: bool = opt(
        False, "also augment the validation data, as the paper did (off: unbiased validation)"
    )


@dataclass(frozen=True)
class TrainConfig:
    enabled: bool = opt(True, "train the paper's six trainings (models 1-3 without and with augmentation, "
                        "sections 4-5); false leaves them and their sections out")
    models: tuple[int, ...] = opt((1, 2, 3), "which of the paper's models to train (section 4)",
                                  non_empty_subset(1, 2, 3))
    epochs: int = opt(50, "maximum epochs per training", epoch_count())
    batch_size: int = opt(64, "images per batch", at_least(1))
    learning_rate: float = opt(1e-3, "Adam learning rate", learning_rate_check())
    patience: int = opt(5, "early stopping: epochs without val_loss improvement (paper 3.3)",
                        non_negative())
    start_from_epoch: int = opt(15, "early stopping: epochs before val_loss is watched (paper 3.3)",
                                non_negative())
    precision: str = opt(
        "auto", "'auto' (bf16 where the hardware computes it, float16 with loss scaling on GPUs "
        "of compute capability 7.x, else float32), 'float32', 'mixed_bfloat16' or 'mixed_float16'",
        one_of(*PRECISIONS),
    )
    workers: int = opt(
        0, "worker processes that run a stage's independent units (the six trainings, the k-fold folds) "
        "at once; 0: one per `threads_per_unit` cores (one per GPU on a machine with several), 1: in "
        "this process, one after another. Changes no number (docs/parallel.md)",
        non_negative("0 (one per threads_per_unit cores) or more"), changes_results=False,
    )
    threads_per_unit: int = opt(
        2, "TensorFlow threads (intra- and inter-op) of every training, in the study's process and in "
        "each worker: fixed, so the numbers do not depend on the machine's cores or the pool's size",
        between(1, 256, unit="threads"),
    )
    deterministic: bool = opt(
        False, "TensorFlow's op determinism for the whole study (enable_op_determinism): an op without a "
        "deterministic kernel fails instead of varying; matters on GPUs, CPU runs repeat without it",
    )
    class_weight: str = opt(
        "none", "'none' (the paper's) or 'balanced': each image's loss weighted by n / (2 x its class's "
        "count in the training split), so an imbalanced folder's minority class counts as much as "
        "the majority", one_of(*CLASS_WEIGHTS),
    )


@dataclass(frozen=True)
class TuneConfig:
    """Bayesian optimisation of the model-3 family (paper 6); one [min, max, step] range for each
    of chimuf.core.hyperparameters' six names."""

    enabled: bool = opt(True, "run the Bayesian search (paper 6); false: the final model takes the paper's "
                        "own best hyperparameters (16/96/192 filters, 96 units, dropouts 0.05/0.4)")
    max_trials: int = opt(10, "hyperparameter sets to try", at_least(1))
    epochs: int = opt(50, "maximum epochs per trial, as the trainings' (early stopping as in training; "
                      "the paper's search ran 50)", epoch_count())
    prune: bool = opt(True, "stop a trial whose best val_accuracy so far is below the median of the "
                      "finished trials' at the same epoch (the median stopping rule); false: every trial "
                      "runs until early stopping, the paper's protocol")
    prune_after: int = opt(5, "pruning: epochs every trial runs before the rule may stop it", at_least(1))
    conv1_filters: tuple[int, ...] = opt((16, 64, 16), "filters of conv block 1: [min, max, step]",
                                         search_range())
    conv2_filters: tuple[int, ...] = opt((32, 128, 32), "filters of conv block 2: [min, max, step]",
                                         search_range())
    conv3_filters: tuple[int, ...] = opt((64, 256, 64), "filters of conv block 3: [min, max, step]",
                                         search_range())
    dense_units: tuple[int, ...] = opt((32, 128, 32), "units of the dense layer: [min, max, step]",
                                       search_range())
    dropout_conv: tuple[float, ...] = opt((0.0, 0.5, 0.05), "dropout after each conv block",
                                          search_range(rate=True))
    dropout_dense: tuple[float, ...] = opt((0.0, 0.5, 0.05), "dropout before the output layer",
                                           search_range(rate=True))
    worker_timeout_s: float = opt(
        3600.0, "distributed search: a worker silent this long (no epoch reported) has its trial marked "
        "failed; must exceed one epoch plus building a model",
        positive("a positive number of seconds"), changes_results=False,
    )

    def range_of(self, name: str) -> tuple[float, float, float]:
        """[min, max, step] of hyperparameter `name` (a name of chimuf.core.hyperparameters)."""
        return getattr(self, name)


@dataclass(frozen=True)
class ModernConfig:
    """A modern from-scratch recipe trained beside the paper's models (ml.architectures.modern), for the
    report's "beyond the paper" part; the paper's sections are untouched by it."""

    enabled: bool = opt(True, "train the modern recipe (its own stage, after the k-fold)")
    widths: tuple[int, ...] = opt((32, 64, 128, 256), "channels of the stem and of each residual stage",
                                  Check(lambda v: len(v) >= 1 and all(w >= 1 for w in v),
                                        "a non-empty list of whole numbers of at least 1"))
    blocks: int = opt(1, "residual blocks per stage", at_least(1))
    epochs: int = opt(30, "epochs of the cosine schedule (no early stopping; the best val_loss epoch "
                      "is kept)", epoch_count())
    batch_size: int = opt(64, "images per batch", at_least(1))
    learning_rate: float = opt(2e-3, "AdamW peak learning rate, after the warm-up", learning_rate_check())
    weight_decay: float = opt(0.05, "AdamW decoupled weight decay", non_negative())
    schedule: str = opt("cosine", "learning rate after the warm-up: 'cosine' (decay to 0 over the training) "
                        "or 'constant'", one_of(*SCHEDULES))
    warmup_epochs: int = opt(3, "epochs of linear warm-up before the cosine decay", epoch_count(0))
    label_smoothing: float = opt(0.1, "label smoothing of the cross-entropy",
                                 between(0, 0.5, high_inclusive=False))
    dropout: float = opt(0.2, "dropout before the output layer", between(0, 1, high_inclusive=False))
    mixup: float = opt(0.0, "mixup Beta parameter (0 = off)", non_negative())
    cutmix: float = opt(0.0, "CutMix Beta parameter (0 = off)", non_negative())
    augment: bool = opt(True, "also apply the paper's augmentation (section [augment])")
    train_scale: float = opt(1.0, "side of the training images as a fraction of data.image_size (rounded "
                             "to a multiple of 8); below 1 trains on smaller images, faster, and tests "
                             "at the full side (the train-test resolution discrepancy: augmentation "
                             "enlarges objects in training)", between(0.25, 1))

    def train_side(self, image_size: int) -> int:
        """The side the recipe trains at: `image_size` scaled by `train_scale`, a multiple of 8."""
        if self.train_scale >= 1:
            return image_size
        return min(image_size, max(8, round(image_size * self.train_scale / 8) * 8))


@dataclass(frozen=True)
class PretrainedConfig:
    """An optional pretrained baseline (ml.architectures.pretrained), off by default: what a user with few
    images would pick instead, set beside the from-scratch models in "beyond the paper"."""

    backbone: str = opt("", "'' (off), 'mobilenet_v3_small', 'mobilenet_v3_large' or 'efficientnet_b0'",
                        one_of("", *BACKBONES))
    weights: str = opt("", "the backbone's no-top weights file (.h5 or .weights.h5); '' = Keras' download "
                       "('imagenet'), which needs internet")
    epochs: int = opt(8, "epochs of the new head, the backbone frozen", epoch_count())
    skip_offline: bool = opt(False, "when the weights are neither a given file nor in Keras' cache "
                             "(~/.keras/models), leave the candidate out with one line instead of "
                             "downloading them")
    fine_tune_epochs: int = opt(4, "then epochs with the backbone's last layers trainable (0 = none)",
                                non_negative())
    fine_tune_layers: int = opt(20, "backbone layers fine-tuned (batch normalisation stays frozen)",
                                non_negative())
    learning_rate: float = opt(1e-3, "Adam learning rate of the head", learning_rate_check())
    fine_tune_learning_rate: float = opt(1e-5, "Adam learning rate of the fine-tuning", learning_rate_check())
    dropout: float = opt(0.2, "dropout before the output layer", between(0, 1, high_inclusive=False))


BUILDER_NAME = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class CandidatesConfig:
    """Architectures of the user's own, trained and judged beside the others (ml.architectures.builders)."""

    builders: tuple[str, ...] = opt(
        (), "'module:function' names of model builders: function(image_size=..., seed=...) returns a Keras "
        "model (one sigmoid output); each is trained by the fit loop (train.* settings, with augmentation), "
        "evaluated, explained and may be chosen as the model to take home",
        Check(lambda v: all(BUILDER_NAME.match(name) for name in v),
              "a list of 'package.module:function' names"))
    gradcam_layer: str = opt("", "the layer whose Grad-CAM the take-home section shows for the chosen "
                             "model, where the model has it; '' = its last Conv2D")


@dataclass(frozen=True)
class EvaluateConfig:
    bootstrap_samples: int = opt(2000, "bootstrap resamples for confidence intervals", at_least(10))
    confidence: float = opt(0.95, "confidence level of the intervals", between(0.5, 1, high_inclusive=False))
    calibration_bins: int = opt(10, "bins of the reliability diagram and ECE", at_least(2))
    threshold_rule: str = opt(
        "accuracy", "how the decision threshold is chosen on the validation split: 'accuracy' (the "
        "paper's), 'balanced_accuracy', 'f1' (of the positive class) or 'youden' (TPR - FPR; the "
        "same threshold as balanced_accuracy)", one_of(*THRESHOLD_RULES),
    )


@dataclass(frozen=True)
class KFoldConfig:
    # 100 folds of ~6 000 images is already near leave-one-out cost (100 trainings); more is a typo.
    enabled: bool = opt(True, "run the k-fold cross-validation (paper 8); false leaves it, the suspect "
                        "labels and the fold ensemble out")
    folds: int = opt(5, "folds of the cross-validation over train+validation (paper 8)", between(2, 100))
    early_stopping: bool = opt(
        False, "true: each fold early-stops on its own held-out fold, as the paper did (costs epochs "
        "and flatters the fold's score: the fold that scores it also chose its epoch); false: each fold "
        "trains for a fixed number of epochs, no stopping")
    epochs: int = opt(0, "with early_stopping, the maximum epochs per fold (0 = train.epochs); without, "
                      "the epochs of every fold (0 = as many as the final model's kept epoch)",
                      non_negative("0 or more"))


@dataclass(frozen=True)
class LabelsConfig:
    shown: int = opt(12, "suspect labels shown as thumbnails in the report, most suspicious first",
                     non_negative())
    duplicate_groups: int = opt(12, "duplicate groups shown as thumbnail strips in the report, "
                                "cross-class ones first", non_negative())


@dataclass(frozen=True)
class ExplainConfig:
    max_images: int = opt(8, "misclassified test images explained, most confident first",
                          non_negative())
    activation_images: int = opt(4, "test images whose activation maps are drawn",
                                 non_negative())


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] = opt(("tflite",), "formats the final model is exported to besides .keras: "
                                   "'tflite', 'savedmodel', 'onnx', 'openvino' (onnx needs chimuf[onnx], "
                                   "openvino chimuf[openvino])",
                                   Check(lambda v: set(v) <= {"tflite", "savedmodel", "onnx", "openvino"},
                                         "a list of 'tflite', 'savedmodel', 'onnx', 'openvino'"))
    check_images: int = opt(64, "test images each export is run on to compare it with the Keras model",
                            at_least(1))
    quantize: str = opt("int8", "a second TFLite file, quantized: 'int8' (weights and activations, "
                        "calibrated on validation photos), 'dynamic' (int8 weights), 'float16', or '' "
                        "for none; its test accuracy is set beside the float one's",
                        one_of("", "int8", "dynamic", "float16"))
    calibration_images: int = opt(100, "validation images int8 quantization calibrates on", at_least(1))


@dataclass(frozen=True)
class TrackingConfig:
    tensorboard: bool = opt(True, "write TensorBoard logs of every training, trial and fold to "
                            "RUN/tensorboard/")
    mlflow_uri: str = opt("", "log the run to MLflow: a local folder (an SQLite store, FOLDER/mlflow.db), "
                          "or a tracking URI (sqlite:///mlflow.db, http://host:5000); '' = off; "
                          "needs chimuf[mlflow]")
    mlflow_experiment: str = opt("chimuf", "the MLflow experiment runs are logged under")


@dataclass(frozen=True)
class ReportConfig:
    formats: tuple[str, ...] = opt(("html", "pdf"), "what to render: 'html', 'pdf'",
                                   non_empty_subset(*REPORT_FORMATS))
    engine: str = opt("auto", "'auto' (Quarto if installed, else pandoc+Typst), 'quarto' or 'pandoc'",
                      one_of(*REPORT_ENGINES))
    timeout_s: int = opt(300, "a render running longer is stopped with an error", at_least(1),
                         changes_results=False)
    title: str = opt("", "the report's title; '' means the paper's, as a reproduction")
    author: str = opt("", "the report's author(s); '' means none shown")
    abstract: str = opt("", "the report's abstract, shown above the run at a glance; '' means none")
    templates: str = opt("", "a folder of your own .j2 templates, each replacing the packaged one of the "
                         "same name (e.g. introduction.md.j2); '' means the packaged ones only")


@dataclass(frozen=True)
class ModelFilesConfig:
    """Limits on the `.keras` files chimuf opens (ml.modelfiles.modelfile): model files are untrusted."""

    # The tuner's largest model at 128 px (conv 64/128/256, dense 128) has 8 759 681 parameters,
    # model 1 has 4 213 825; at 256 px the tuner's largest has 33 925 505. 50 M leaves 5.7x room
    # at the paper's 128 px, and costs at most 200 MB of float32 weights (800 MB of weights file
    # with optimizer state) for a file that claims it. A study whose models would exceed it is
    # refused before training (chimuf.study).
    max_params: int = opt(50_000_000, "model files with more parameters (estimated from their "
                          "config.json before loading) are refused", at_least(1))


@dataclass(frozen=True)
class StudyConfig:
    profile: str = opt("paper", "the profile these values start from: paper, fast, quick or smoke")
    seed: int = opt(42, "seed of the split, shuffling, augmentation, initialisation and tuning",
                    seed_range())
    data: DataConfig = field(default_factory=DataConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    kfold: KFoldConfig = field(default_factory=KFoldConfig)
    modern: ModernConfig = field(default_factory=ModernConfig)
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    model_files: ModelFilesConfig = field(default_factory=ModelFilesConfig)


# --- profiles ----------------------------------------------------------------------------------

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's full protocol.
    "paper": {},
    # Full data, smaller images and short trainings: the whole study in minutes.
    "quick": {
        "data": {"image_size": 64},
        "train": {"epochs": 8, "start_from_epoch": 4, "patience": 2},
        "tune": {"max_trials": 3, "epochs": 5},
        "kfold": {"folds": 3, "epochs": 5},
        "modern": {"epochs": 8, "warmup_epochs": 1},
        "evaluate": {"bootstrap_samples": 1000},
        "explain": {"max_images": 6, "activation_images": 2},
    },
    # "The best honest model for my folder, now": none of the paper's six trainings, search or
    # k-fold; the modern recipe (and the pretrained backbone where its weights are at hand) beside a
    # short final model (the paper's best hyperparameters: the reference of McNemar's tests), test-time
    # flips, the model to take home chosen on validation, exported. Target: <= 20 min on 2 cores at
    # 128 px; `chimuf study --profile fast --plan` prints this machine's estimate.
    "fast": {
        "train": {"enabled": False, "epochs": 12, "start_from_epoch": 4, "patience": 3},
        "tune": {"enabled": False},
        "kfold": {"enabled": False},
        "modern": {"epochs": 30, "warmup_epochs": 2, "train_scale": 0.875},
        "pretrained": {"backbone": "mobilenet_v3_small", "skip_offline": True},
        "evaluate": {"bootstrap_samples": 1000},
        "explain": {"max_images": 8, "activation_images": 2},
    },
    # A tiny subset, tiny images, a couple of epochs: the pipeline end to end, for CI.
    "smoke": {
        "data": {"image_size": 32, "max_per_class": 50},
        "audit": {"min_side": 16},
        "train": {"epochs": 2, "start_from_epoch": 1, "patience": 1, "batch_size": 16},
        "tune": {"max_trials": 2, "epochs": 2},
        "kfold": {"folds": 2, "epochs": 2},
        "modern": {"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "widths": [8, 16, 32]},
        "evaluate": {"bootstrap_samples": 200},
        "explain": {"max_images": 2, "activation_images": 1},
    },
}


# --- loading and validation --------------------------------------------------------------------


def load_config(
    path: Path | None = None,
    profile: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> StudyConfig:
    """Defaults, then the profile, then the TOML file at `path`, then `overrides`.

    The profile comes from `profile`, else from the file's top-level `profile` key, else `paper`.
    """
    from_file = read_toml(path) if path is not None else {}
    chosen = profile or from_file.get("profile") or "paper"
    if not isinstance(chosen, str):
        raise ConfigError(f"`profile` must be a string, one of {', '.join(PROFILES)}; got {chosen!r}")
    if chosen not in PROFILES:
        raise ConfigError(
            f"unknown profile `{chosen}`; allowed: {', '.join(PROFILES)}"
        )
    layers = [PROFILES[chosen], from_file, overrides or {}]
    merged: dict[str, Any] = {"profile": chosen}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
    merged["profile"] = chosen
    config = build(StudyConfig, merged, where="")
    check_config(config)
    return config


MAX_CONFIG_BYTES = 2**20  # a study config is a few kB


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML at `path`: a regular file of at most MAX_CONFIG_BYTES, every number finite."""
    from chimuf.core.files import read_bounded

    if not path.exists():
        raise ConfigError(f"config file `{path}` does not exist; pass a TOML file to --config")
    data = read_bounded(path, MAX_CONFIG_BYTES, "config file", ConfigError)
    try:
        return tomllib.loads(data.decode("utf-8"), parse_float=finite_float)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file `{path}` is not valid TOML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"config file `{path}`: {exc}") from None
    except ValueError:  # an integer of more digits than Python converts (4 300)
        raise ConfigError(f"config file `{path}` holds a number of more than "
                          f"{sys.get_int_max_str_digits():,} digits; a study config's numbers are short: "
                          "fix that value") from None
    except RecursionError:
        raise ConfigError(f"config file `{path}` nests arrays or tables too deeply to read; a study "
                          "config needs two levels ([section] and key = value)") from None


def finite_float(text: str) -> float:
    """A TOML float; one written as digits that overflows (`1e999`) is refused here, where its text
    is known: it would read as inf and be shown so. The words inf and nan go on to check_config,
    which names their key."""
    value = float(text)
    if not math.isfinite(value) and text.lstrip("+-") not in ("inf", "nan"):
        raise ConfigError(f"the number {text[:40]} is beyond the largest a float holds (about 1.8e308); "
                          "write a number within range")
    return value


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Make dataclass `cls` from `values`, refusing unknown keys and values of the wrong type."""
    if not isinstance(values, dict):
        raise ConfigError(f"`{where.rstrip('.')}` must be a table, got {values!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean `{where}{close[0]}`?" if close else ""
            raise ConfigError(
                f"unknown config key `{where}{key}`{hint} allowed here: {', '.join(known)}"
            )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, where=f"{where}{name}.")
        else:
            kwargs[name] = coerce(value, hint, f"{where}{name}")
    return cls(**kwargs)


def coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    if origin is tuple:
        (item_type, _ellipsis) = get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{key}` must be a list, got {value!r}")
        return tuple(coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"`{key}` must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"`{key}` must be a whole number, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"`{key}` must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{key}` must be a string, got {value!r}")
        return value
    raise AssertionError(f"config field {key} has unsupported type {hint}")


def check_config(config: Any, where: str = "") -> None:
    """Every field's own check (declared beside it with `opt(..., check)`), section by section.

    Every number must be finite first: `inf` and `nan` pass no range honestly (nan compares
    false with everything, so `max_file_mb = nan` would switch a limit off)."""
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_config(value, f"{where}{f.name}.")
            continue
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"`{where}{f.name}` must be a finite number, got {shown!r}")
        check = f.metadata.get("check")
        if check is not None and not check.ok(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"`{where}{f.name}` must be {check.allowed}, got {shown!r}")


# --- showing -----------------------------------------------------------------------------------


def as_dict(config: Any) -> dict[str, Any]:
    """The config as plain JSON/TOML values (tuples become lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        out[f.name] = as_dict(value) if dataclasses.is_dataclass(value) else plain(value)
    return out


def differences(config: StudyConfig, base: StudyConfig | None = None) -> list[tuple[str, Any, Any]]:
    """(key, base value, this value) for every setting that differs from `base` (the paper)."""
    base = base or StudyConfig()
    flat_here, flat_base = flatten(as_dict(config)), flatten(as_dict(base))
    return [(k, flat_base.get(k), v) for k, v in flat_here.items() if flat_base.get(k) != v]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_toml(config: StudyConfig) -> str:
    """The config as commented TOML, ready to edit and pass back with --config."""
    lines = [f"# chimuf study config (profile {config.profile}); every key is optional.", ""]
    sections = []
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            sections.append((f.name, value))
        else:
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {toml_value(value)}")
    for name, section in sections:
        lines += ["", f"[{name}]"]
        for f in fields(section):
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"{f.name} = {toml_value(getattr(section, f.name))}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)
