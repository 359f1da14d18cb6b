"""A complete run written by hand, for the report's tests: results.json plus small PNG figures.

Every stage outcome is filled in with plausible numbers for the Chihuahua/Muffin data (nothing
is trained), and the figures are small labelled PNGs, so a report renders in seconds. One
rejected file and one misclassified image carry a markup-injection name, to show it stays text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from chimuf.core.config import StudyConfig, as_dict, differences, load_config
from chimuf.core.files import atomic_write_json
from chimuf.core.hyperparameters import Hyperparameters
from chimuf.core.results import (
    SCHEMA_VERSION,
    AuditOutcome,
    CacheOutcome,
    ChanceTest,
    ClassCount,
    ClassMetrics,
    Comparison,
    ConfigDifference,
    DuplicateGroup,
    EpochRecord,
    EvaluateOutcome,
    ExplainedImage,
    ExplainOutcome,
    ExportedModel,
    ExportOutcome,
    Figure,
    FileRecord,
    FoldOutcome,
    Interval,
    KFoldOutcome,
    LabelsOutcome,
    LayerRow,
    McNemarTest,
    Predictions,
    Results,
    RunInfo,
    SearchDimension,
    SplitCount,
    SplitOutcome,
    StageFact,
    SuspectLabel,
    ThresholdMetrics,
    TrainingOutcome,
    TrainOutcome,
    Trial,
    TuneOutcome,
)
from chimuf.data.split import split_precision

INJECTION = "<img src=x onerror=alert(1)> $x$ *star*.jpg"
CLASSES = ("chihuahua", "muffin")

# Numbers the tests look for in the rendered report.
ACCURACY = 0.9514
ROC_AUC = 0.9871


def make_png(path: Path, label: str, color: tuple[int, int, int], size: tuple[int, int] = (240, 120)) -> None:
    """A small PNG with its label written on it, so a person looking at the report sees which is which."""
    from PIL import Image, ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    draw.rectangle([4, 4, size[0] - 5, size[1] - 5], outline=(255, 255, 255), width=2)
    draw.text((12, size[1] // 2 - 6), label, fill=(255, 255, 255))
    image.save(path)


def figure(run_dir: Path, path: str, caption: str, color: tuple[int, int, int]) -> Figure:
    make_png(run_dir / path, caption[:38], color)
    return Figure(path, caption)


def history(epochs: int, final_val: float) -> list[EpochRecord]:
    return [
        EpochRecord(epoch=e, loss=1.0 / e, accuracy=0.6 + 0.3 * e / epochs, val_loss=1.1 / e,
                    val_accuracy=final_val - 0.2 * (epochs - e) / epochs, auc=0.9, val_auc=0.9, wall_s=3.0)
        for e in range(1, epochs + 1)
    ]


def layers(filters: tuple[int, ...], dense: int, dropout: bool) -> list[LayerRow]:
    rows, size, channels = [], 128, 3
    for i, f in enumerate(filters, 1):
        rows.append(LayerRow(f"conv{i}", "Conv2D", f"(None, {size}, {size}, {f})", (9 * channels + 1) * f))
        size //= 2
        rows.append(LayerRow(f"pool{i}", "MaxPooling2D", f"(None, {size}, {size}, {f})", 0))
        if dropout:
            rows.append(LayerRow(f"dropout{i}", "Dropout", f"(None, {size}, {size}, {f})", 0))
        channels = f
    flat = size * size * channels
    rows.append(LayerRow("flatten", "Flatten", f"(None, {flat})", 0))
    rows.append(LayerRow("dense", "Dense", f"(None, {dense})", (flat + 1) * dense))
    if dropout:
        rows.append(LayerRow("dropout_dense", "Dropout", f"(None, {dense})", 0))
    rows.append(LayerRow("output", "Dense", "(None, 1)", dense + 1))
    return rows


def training(run_dir: Path, name: str, arch: str, augmented: bool, val_acc: float,
             filters: tuple[int, ...], dense: int = 64, dropout: bool = True) -> TrainingOutcome:
    rows = layers(filters, dense, dropout)
    epochs = 24 if augmented else 19
    return TrainingOutcome(
        name=name, architecture=arch, augmented=augmented, params=sum(r.params for r in rows), layers=rows,
        epochs_run=epochs, best_epoch=epochs - 5, stopped_early=True,
        best_val_loss=round(1 - val_acc, 3) + 0.1,
        best_val_accuracy=val_acc, history=history(epochs, val_acc), history_csv=f"train/{name}.csv",
        model_path=f"train/{name}.keras",
        figure=figure(run_dir, f"train/{name}_curves.png", f"Accuracy and loss of {name}", (40, 90, 160)),
        wall_s=420.0 + 10 * len(filters), images_per_s=371.5, precision="mixed_bfloat16",
    )


def complete_results(run_dir: Path, classes: tuple[str, str] = CLASSES) -> Results:
    """Every stage done; figures written under `run_dir`."""
    a, b = classes
    config = load_config(profile="quick")
    audit = AuditOutcome(
        data_dir="/data/chihuahua-muffin", classes=list(classes),
        files=[
            FileRecord(f"{a}/img_0001.jpg", a, "usable", "", 10_000, "ab" * 32, "JPEG", "RGB", 200, 180,
                       "f" * 16),
            FileRecord(f"{a}/img_0002.png", a, "converted", "palette image (P) converted to RGB", 9_000,
                       "cd" * 32, "PNG", "P", 200, 200, "e" * 16),
            FileRecord(f"{b}/{INJECTION}", b, "rejected", "not an image: cannot identify image file", 120),
            FileRecord(f"{b}/tiny.jpg", b, "rejected", "too small: 12x10 pixels (min_side 32)", 800,
                       "ef" * 32, "JPEG", "RGB", 12, 10),
        ],
        counts=[ClassCount(a, 2558, 1, 0), ClassCount(b, 2172, 0, 2)],
        duplicate_groups=[
            DuplicateGroup("exact", [f"{a}/img_0100.jpg", f"{a}/img_0101.jpg"], [a, a], False),
            DuplicateGroup("near", [f"{a}/img_0200.jpg", f"{b}/img_0300.jpg"], [a, b], True),
        ],
        skipped=["chihuahua/nested/: nested folders are not walked"],
        digest="9f" * 32, wall_s=12.5, near_duplicate_distance=4,
    )
    split = SplitOutcome(
        classes=list(classes), train=[f"{a}/t{i}.jpg" for i in range(3)], validation=[f"{a}/v.jpg"],
        test=[f"{a}/x{i}.jpg" for i in range(947)],
        counts=[SplitCount(a, 1791, 256, 512), SplitCount(b, 1521, 216, 435)],
        groups=[[f"{a}/img_0200.jpg", f"{b}/img_0300.jpg"]], digest="5e" * 32,
        precision=[split_precision("validation", 472, 0.05), split_precision("test", 947, 0.05)],
    )
    cache = CacheOutcome("cache/images.npy", [f"{a}/t0.jpg"], [0], 64, "c4" * 32)
    trainings = [
        training(run_dir, "model1", "model1", False, 0.712, (32, 64), dropout=False),
        training(run_dir, "model1_aug", "model1", True, 0.801, (32, 64), dropout=False),
        training(run_dir, "model2", "model2", False, 0.745, (32, 64)),
        training(run_dir, "model2_aug", "model2", True, 0.836, (32, 64)),
        training(run_dir, "model3", "model3", False, 0.781, (32, 64, 128)),
        training(run_dir, "model3_aug", "model3", True, 0.893, (32, 64, 128)),
    ]
    train = TrainOutcome(trainings, [
        figure(run_dir, f"train/compare_{m}.png", f"Impact of data augmentation on model {m[-1]}",
               (150, 60, 40))
        for m in ("model1", "model2", "model3")
    ])
    best = Hyperparameters(16, 96, 192, 96, 0.05, 0.4)
    tune = TuneOutcome(
        objective="val_accuracy", max_trials=3,
        search_space=[SearchDimension("conv1_filters", [16, 32, 48, 64]),
                      SearchDimension("dropout_conv", [0.0, 0.05, 0.1])],
        trials=[
            Trial("00", "COMPLETED", best, 0.9123, 5, 300.0, history(5, 0.91)),
            Trial("01", "COMPLETED", dataclasses.replace(best, conv1_filters=32), 0.8876, 5, 310.0,
                  history(5, 0.88)),
            Trial("02", "FAILED", dataclasses.replace(best, conv1_filters=64), None, 1, 20.0, [],
                  error="ResourceExhaustedError: OOM when allocating tensor"),
        ],
        best_hyperparameters=best, best_score=0.9123, wall_s=630.0,
        progress_figure=figure(run_dir, "tune/trials.png", "val_accuracy of each trial", (20, 80, 120)),
        hyperparameter_figure=figure(run_dir, "tune/hyperparameters.png",
                                     "val_accuracy against each hyperparameter", (120, 80, 20)),
    )
    final = training(run_dir, "final", "tuned", True, 0.9187, (16, 96, 192), dense=96)
    final.hyperparameters = best
    per_class = [ClassMetrics(a, 0.9413, 0.9707, 0.9558, 512, Interval(0.942, 0.968)),
                 ClassMetrics(b, 0.9642, 0.9287, 0.9461, 435, Interval(0.929, 0.961))]
    evaluate = EvaluateOutcome(
        model="final", classes=list(classes), n_images=947, accuracy=ACCURACY,
        accuracy_interval=Interval(0.9377, 0.9636), roc_auc=ROC_AUC,
        roc_auc_interval=Interval(0.9812, 0.9921),
        confusion_matrix=[[497, 15], [31, 404]], per_class=per_class, macro_f1=0.9510,
        at_validation_threshold=ThresholdMetrics(
            0.43, 0.9535, [[501, 11], [33, 402]],
            [ClassMetrics(a, 0.9382, 0.9785, 0.9580, 512), ClassMetrics(b, 0.9733, 0.9241, 0.9481, 435)],
            rule="maximum accuracy on the validation split"),
        expected_calibration_error=0.0213,
        mcnemar=[McNemarTest("final", "model3_aug", 41, 19, 7.35, 0.0067,
                             "chi-square, continuity-corrected")],
        leakage_free_accuracy=0.9498, leakage_free_n=921, keras_accuracy=ACCURACY,
        predictions=Predictions(list(classes), 0.5, split.test, [i % 2 for i in range(947)],
                                [0.9 if i % 2 else 0.1 for i in range(947)]),
        predictions_csv="evaluate/predictions.csv", validation_predictions_csv="evaluate/validation.csv",
        confusion_figure=figure(run_dir, "evaluate/confusion_matrix.png",
                                "Confusion matrix (rows true, columns predicted)", (30, 120, 60)),
        roc_figure=figure(run_dir, "evaluate/roc.png", "ROC curve", (120, 30, 120)),
        reliability_figure=figure(run_dir, "evaluate/reliability.png", "Reliability diagram", (120, 120, 30)),
        confidence=0.95, bootstrap_samples=1000,
        chance=ChanceTest(947, 901, ACCURACY, a, 512 / 947, 1e-90, 0.05, True),
        comparisons=comparisons(trainings, final),
    )
    folds = [FoldOutcome(i, "COMPLETED", 3031, 758, 0.90 + 0.01 * i, 0.30 - 0.01 * i, 5, 200.0)
             for i in (1, 2)]
    folds.append(FoldOutcome(3, "FAILED", 3032, 757, float("nan"), float("nan"), 0, 3.0, error="killed <b>"))
    oof = Predictions(list(classes), 0.5, [f"{a}/t0.jpg", f"{b}/{INJECTION}", f"{a}/t1.jpg"], [0, 1, 0],
                      [0.1, 0.02, 0.97])
    kfold = KFoldOutcome(folds, 0.915, 0.005, 0.285, 0.005,
                         figure(run_dir, "kfold/folds.png", "Accuracy and loss across folds", (90, 90, 90)),
                         predictions=oof, predictions_csv="kfold/oof_predictions.csv", fold_of=[1, 2, 1])
    labels = LabelsOutcome(
        method="confident learning (fixture)", n_checked=3,
        suspects=[SuspectLabel(f"{b}/{INJECTION}", b, a, 0.02, 2, "train", [f"{a}/img_0200.jpg"]),
                  SuspectLabel(f"{a}/t1.jpg", a, b, 0.03, 1, "validation")],
        suspects_csv="labels/suspect_labels.csv",
        suspects_figure=figure(run_dir, "labels/suspect_labels.png", f"Suspect labels: {INJECTION}",
                               (150, 150, 0)),
        n_shown=2,
        duplicate_figures=[figure(run_dir, "labels/duplicates_1.png", "Duplicate groups 2, 1 of 2",
                                  (0, 150, 60))],
        n_groups_shown=2, duplicates_csv="labels/duplicate_groups.csv",
    )
    activations = [figure(run_dir, f"explain/activations_{i}.png", f"Activations of test image {i}",
                          (0, 100, 200)) for i in (1, 2)]
    explain = ExplainOutcome(
        conv_layers=["conv1", "conv2", "conv3"],
        kernel_figures=[figure(run_dir, "explain/kernels_conv1.png", "First-layer kernels", (200, 100, 0))],
        activation_figures=activations,
        gradcam_figures=[figure(run_dir, "explain/gradcam_layers.png", "Grad-CAM per layer", (200, 0, 100))],
        method_figures=[figure(run_dir, "explain/methods.png", "Grad-CAM, Grad-CAM++, Score-CAM, SmoothGrad",
                               (0, 150, 150))],
        gallery_figure=figure(run_dir, "explain/gallery.png", "The most confident mistakes", (100, 0, 0)),
        misclassified=[
            ExplainedImage(f"{b}/{INJECTION}", b, a, 0.03,
                           figure(run_dir, "explain/mistake_1.png", f"Grad-CAM of {INJECTION}", (60, 0, 60))),
            ExplainedImage(f"{a}/img_0042.jpg", a, b, 0.11, None),
        ],
        n_misclassified=46,
        activation_images=[ExplainedImage(f"{a}/img_0007.jpg", a, a, 0.98, activations[0]),
                           ExplainedImage(f"{b}/img_0009.jpg", b, b, 0.91, activations[1])],
        n_test=947, threshold=0.5, n_gallery=36, misclassified_csv="explain/misclassified.csv",
    )
    stages = [StageFact(name, "done", wall) for name, wall in (
        ("audit", 12.5), ("split", 0.4), ("cache", 30.0), ("train", 2600.0), ("tune", 630.0),
        ("final", 480.0), ("evaluate", 25.0), ("kfold", 600.0), ("labels", 4.0), ("explain", 90.0))]
    return Results(SCHEMA_VERSION, run_info(config, "fixture-run", "finished", stages, audit.digest),
                   audit=audit, split=split, cache=cache, train=train, tune=tune, final=final,
                   evaluate=evaluate, kfold=kfold, labels=labels, explain=explain,
                   export=ExportOutcome("export/final.keras", "export/final.classes.json", 0.43,
                                        "maximum accuracy on the validation split",
                                        [ExportedModel("tflite", "export/final.tflite", 2_400_000, 64,
                                                       3.1e-7, 2.2e-3, "", 0.9443, 1.0, "LiteRT 2.3.0"),
                                         ExportedModel("tflite", "export/final.int8.tflite", 610_000, 64,
                                                       1.2e-2, 1.3e-2, "int8", 0.9409, 0.9916,
                                                       "LiteRT 2.3.0")],
                                        test_accuracy=0.9443, test_images=1184, calibration_images=100))


def comparisons(trainings: list[TrainingOutcome], final: TrainingOutcome) -> list[Comparison]:
    """The evaluation's comparisons, as chimuf.stats.evidence makes them from the fixture's numbers."""
    from chimuf.stats import evidence

    mcnemar = [McNemarTest("final", "model3_aug", 41, 19, 7.35, 0.0067, "chi-square, continuity-corrected")]
    accuracies = {"final": ACCURACY, "model3_aug": 0.928}
    best = max(trainings, key=lambda t: t.best_val_accuracy)
    return evidence.every_comparison(trainings, best, final, 472, mcnemar, accuracies, 947, CLASSES,
                                     0.95)


def partial_results(run_dir: Path) -> Results:
    """Only audit and split have run (a study stopped after the split)."""
    full = complete_results(run_dir)
    stages = [s for s in full.run.stages if s.name in ("audit", "split")]
    return Results(SCHEMA_VERSION, dataclasses.replace(full.run, status="running", stages=stages),
                   audit=full.audit, split=full.split)


def run_info(config: StudyConfig, run_id: str, status: str, stages: list[StageFact], digest: str) -> RunInfo:
    return RunInfo(
        run_id=run_id, status=status, profile=config.profile, seed=config.seed, config=as_dict(config),
        config_differences=[ConfigDifference(*d) for d in differences(config) if d[0] != "profile"],
        data_dir="/data/chihuahua-muffin", data_digest=digest,
        packages={"python": "3.11.2", "tensorflow": "2.21.0", "keras": "3.15.0"},
        hardware="Test CPU, 2 logical CPUs, Linux", started_at="2026-01-01T10:00:00+00:00",
        updated_at="2026-01-01T11:30:00+00:00", stages=stages, chimuf_version="0.1.0",
    )


def write_run(run_dir: Path, results: Results) -> Path:
    """results.json in `run_dir`, as the study writes it."""
    atomic_write_json(run_dir / "results.json", results)
    return run_dir
