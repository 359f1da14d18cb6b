"""Error analysis: Grad-CAM wiring on a model whose evidence is known, figure layouts, the stage
on a tiny hand-made run, and `chimuf predict --explain` with a bad file.

The key model: 24-pixel noise images whose class is a bright square in one corner (chihuahua
top-left, muffin bottom-right, as conftest's make_image draws them), learnt by a two-layer CNN
of the chimuf layout (rescaling inside, conv1/conv2, sigmoid `output`). Whatever evidence such a
model uses can only sit in the image's bright corner, so a heatmap lit anywhere else means the
wiring (layer, score, axes) is wrong.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest

from chimuf.core.config import AuditConfig, ExplainConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext
from chimuf.core.errors import DataError
from chimuf.core.results import (
    CacheOutcome,
    EvaluateOutcome,
    ExplainOutcome,
    Figure,
    Interval,
    Prediction,
    Predictions,
    SplitOutcome,
    ThresholdMetrics,
    TrainingOutcome,
    from_jsonable,
    sorted_mistakes,
    to_jsonable,
)
from chimuf.ml import gradcam
from chimuf.ml.modelfiles import modelfile
from chimuf.ml.plots.explain_plots import (
    MAX_MAPS,
    draw_activation_maps,
    draw_filter_grid,
    draw_heatmap_grid,
    draw_rgb_kernels,
)
from chimuf.stages import explain
from chimuf.tools import explain_files
from tests.conftest import make_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:tf_keras_vis.*")

SIZE = 24
CLASSES = ["chihuahua", "muffin"]
HALF = SIZE // 2


def quiet() -> Console:
    return Console(stream=io.StringIO(), live=False)


def corner_images(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (2n, S, S, 3) and labels (2n,): class 0 bright top-left, class 1 bottom-right,
    alternating, drawn as conftest's make_image draws them."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    q = SIZE // 3
    for i in range(2 * per_class):
        label = i % 2
        pixels = rng.integers(0, 90, size=(SIZE, SIZE, 3), dtype=np.uint8)
        if label == 0:
            pixels[:q, :q] = 230
        else:
            pixels[-q:, -q:] = 230
        images.append(pixels)
        labels.append(label)
    return np.stack(images), np.array(labels)


def tiny_cnn(seed: int):
    """conv1 (8) → pool → conv2 (8) → pool → flatten → output (sigmoid): chimuf's layout, small."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    for i in (1, 2):
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="output")(x)
    return keras.Model(inputs, outputs)


def quadrant_means(heat: np.ndarray) -> dict[str, float]:
    """Mean heat of each quadrant of one (S, S) map."""
    return {"top-left": float(heat[:HALF, :HALF].mean()), "top-right": float(heat[:HALF, HALF:].mean()),
            "bottom-left": float(heat[HALF:, :HALF].mean()),
            "bottom-right": float(heat[HALF:, HALF:].mean())}


@pytest.fixture(scope="module")
def trained_path(tmp_path_factory) -> Path:
    """The corner model, trained to 100 % (and saturated: p is 0 or 1 in float32), saved with
    its class names as chimuf saves models."""
    import keras

    images, labels = corner_images(32, seed=0)
    model = tiny_cnn(seed=0)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])
    history = model.fit(images.astype(np.float32), labels, epochs=20, batch_size=16, verbose=0)
    assert history.history["accuracy"][-1] == 1.0
    path = tmp_path_factory.mktemp("model") / "final.keras"
    model.save(path)
    modelfile.write_classes(path, CLASSES)
    return path


@pytest.fixture(scope="module")
def trained(trained_path):
    return modelfile.load_model(trained_path)


# --- the score and the model explained -----------------------------------------------------------


def test_class_score_is_the_logit_for_class_1_and_its_negative_for_class_0():
    import tensorflow as tf

    score = gradcam.class_score([0, 1, 1])
    z = tf.constant([[2.0], [2.0], [-3.0]])  # (N, 1) logits
    assert np.allclose(np.asarray(score(z)), [-2.0, 2.0, -3.0])


def test_gradcam_of_the_logit_equals_gradcam_of_p_and_of_one_minus_p():
    """The maps of ±z are those of p and 1 − p (the brief's scores): same up to p(1 − p) > 0."""
    from tf_keras_vis.gradcam import Gradcam

    model = tiny_cnn(seed=3)  # untrained: p near 0.5, nothing saturates
    images, _ = corner_images(2, seed=5)
    pixels = images.astype(np.float32)
    p_model = Gradcam(model, clone=False)
    for class_id, score in ((1, lambda out: out[:, 0]), (0, lambda out: 1.0 - out[:, 0])):
        ours = gradcam.gradcam_maps(gradcam.logit_model(model), images, ["conv2"], [class_id] * 4)
        reference = p_model(score, pixels, penultimate_layer="conv2", seek_penultimate_conv_layer=False)
        assert np.allclose(ours["conv2"], np.asarray(reference), atol=1e-3), f"class {class_id}"


def test_logit_model_outputs_the_logit_of_the_saved_probability(trained):
    images, _ = corner_images(2, seed=7)
    pixels = images.astype(np.float32)
    p = trained.predict(pixels, verbose=0)[:, 0]
    z = gradcam.logit_model(trained).predict(pixels, verbose=0)[:, 0]
    assert np.allclose(1 / (1 + np.exp(-z)), p, atol=1e-6)


def test_two_class_model_gives_one_minus_p_and_p_after_softmax(trained):
    images, _ = corner_images(2, seed=7)
    pixels = images.astype(np.float32)
    p = trained.predict(pixels, verbose=0)[:, 0]
    pair = gradcam.two_class_model(gradcam.logit_model(trained)).predict(pixels, verbose=0)  # (N, 2)
    softmax = np.exp(pair) / np.exp(pair).sum(axis=1, keepdims=True)
    assert np.allclose(softmax, np.stack([1 - p, p], axis=1), atol=1e-6)


def test_mixed_bfloat16_model_is_explained_through_a_float32_copy():
    from chimuf.ml.architectures.models import build_model

    model = build_model("model1", SIZE, precision="mixed_bfloat16")
    copy = gradcam.logit_model(model)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    assert model.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"  # the original is kept


# --- Grad-CAM on the corner model ------------------------------------------------------------------


def test_gradcam_of_the_last_conv_layer_lights_the_signal_corner(trained):
    """For each test image, the class evidence the model found (for either class: a model may
    learn one corner as evidence and the other as its absence) sits in the image's bright corner."""
    images, labels = corner_images(4, seed=11)
    p = trained.predict(images.astype(np.float32), verbose=0)[:, 0]
    assert ((p > 0.5) == (labels == 1)).all(), "the corner model should classify fresh images"
    logits = gradcam.logit_model(trained)
    true = gradcam.gradcam_maps(logits, images, ["conv2"], list(labels))["conv2"]
    other = gradcam.gradcam_maps(logits, images, ["conv2"], list(1 - labels))["conv2"]
    for i, label in enumerate(labels):
        quadrants = quadrant_means(true[i] + other[i])
        corner = "top-left" if label == 0 else "bottom-right"
        hottest = max(quadrants, key=quadrants.get)
        assert hottest == corner, f"image {i} (class {label}): {quadrants}"
        assert quadrants[corner] > 2 * max(v for k, v in quadrants.items() if k != corner)


def test_gradcam_of_the_two_classes_differ(trained):
    images, _ = corner_images(2, seed=13)
    logits = gradcam.logit_model(trained)
    as_1 = gradcam.gradcam_maps(logits, images, ["conv1", "conv2"], [1] * len(images))
    as_0 = gradcam.gradcam_maps(logits, images, ["conv1", "conv2"], [0] * len(images))
    for layer in ("conv1", "conv2"):
        assert not np.allclose(as_1[layer], as_0[layer]), layer


def test_gradcam_is_not_blank_when_the_sigmoid_saturates(trained):
    images, labels = corner_images(2, seed=17)
    p = trained.predict(images.astype(np.float32), verbose=0)[:, 0]
    assert ((p == 0.0) | (p == 1.0)).any(), "precondition: some probabilities round to 0 or 1"
    heat = gradcam.gradcam_maps(gradcam.logit_model(trained), images, ["conv2"], list(labels))
    other = gradcam.gradcam_maps(gradcam.logit_model(trained), images, ["conv2"], list(1 - labels))
    assert all(heat["conv2"][i].max() > 0 or other["conv2"][i].max() > 0 for i in range(len(images)))


def test_method_maps_give_four_normalised_maps_per_image(trained):
    images, labels = corner_images(2, seed=19)
    maps = gradcam.method_maps(gradcam.logit_model(trained), images, "conv2", list(labels), seed=1)
    assert [name for name, _ in maps] == ["Grad-CAM", "Grad-CAM++", "Score-CAM", "SmoothGrad"]
    for name, heat in maps:
        assert heat.shape == (len(images), SIZE, SIZE), name
        assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6, name


def test_smoothgrad_is_the_same_for_the_same_seed(trained):
    images, labels = corner_images(1, seed=23)
    logits = gradcam.logit_model(trained)
    first = dict(gradcam.method_maps(logits, images, "conv2", list(labels), seed=4))["SmoothGrad"]
    again = dict(gradcam.method_maps(logits, images, "conv2", list(labels), seed=4))["SmoothGrad"]
    assert np.array_equal(first, again)


# --- figure layouts ----------------------------------------------------------------------------------


def grid_shape(figure) -> tuple[int, int]:
    return figure.axes[0].get_subplotspec().get_gridspec().get_geometry()


def visible_axes(figure) -> int:
    return sum(ax.get_visible() for ax in figure.axes)


def test_first_layer_kernels_have_a_row_per_filter_and_r_g_b_rgb_columns():
    figure = draw_rgb_kernels(np.random.default_rng(0).normal(size=(3, 3, 3, 5)), "conv1")
    assert grid_shape(figure) == (5, 4)
    assert [figure.axes[c].get_title() for c in range(4)] == ["R", "G", "B", "RGB"]


def test_many_first_layer_kernels_continue_in_column_groups_side_by_side():
    figure = draw_rgb_kernels(np.random.default_rng(0).normal(size=(3, 3, 3, 32)), "conv1")
    assert grid_shape(figure) == (8, 19)  # 4 groups of 8 filters: R, G, B, RGB and a gap
    assert visible_axes(figure) == 32 * 4


def test_deeper_kernels_have_one_visible_cell_per_filter():
    figure = draw_filter_grid(np.random.default_rng(0).normal(size=(3, 3, 8, 10)), "conv2")
    assert grid_shape(figure) == (3, 4)  # ceil(sqrt(10)) = 4 columns
    assert visible_axes(figure) == 10


def test_activation_figure_shows_every_map_of_a_small_layer_and_caps_a_large_one():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    layers = [("conv1", np.random.default_rng(0).random((24, 24, 4))),
              ("conv2", np.random.default_rng(1).random((12, 12, 40)))]
    figure = draw_activation_maps(image, layers, "title")
    assert visible_axes(figure) == 1 + 4 + MAX_MAPS


def test_heatmap_grid_has_a_row_per_image_and_the_image_plus_a_column_per_map():
    images = np.zeros((3, SIZE, SIZE, 3), np.uint8)
    heat = np.zeros((3, SIZE, SIZE), np.float32)
    figure = draw_heatmap_grid(images, [("conv1", heat), ("conv2", heat)], ["a", "b", "c"])
    assert grid_shape(figure) == (3, 3)
    assert [figure.axes[j].get_title() for j in range(3)] == ["image", "conv1", "conv2"]


# --- choosing and reading --------------------------------------------------------------------------


def test_mistakes_come_most_confident_first():
    predictions = [Prediction("a", 0, 0.6), Prediction("b", 1, 0.1), Prediction("c", 0, 0.95),
                   Prediction("d", 1, 0.9)]
    assert [p.path for p in sorted_mistakes(predictions)] == ["c", "b", "a"]


def test_a_probability_of_exactly_one_half_predicts_class_0_as_the_evaluator_counts():
    assert Prediction("a", 0, 0.5).right
    assert not Prediction("b", 1, 0.5).right


def test_activation_images_cover_both_classes_and_outcomes_deterministically():
    predictions = ([Prediction(f"r0_{i}", 0, 0.1) for i in range(5)]
                   + [Prediction(f"r1_{i}", 1, 0.9) for i in range(5)]
                   + [Prediction(f"w0_{i}", 0, 0.8) for i in range(5)]
                   + [Prediction(f"w1_{i}", 1, 0.2) for i in range(5)])
    chosen = explain.choose_activation_images(predictions, 4, seed=1)
    assert {(p.true_id, p.right) for p in chosen} == {(0, True), (1, True), (0, False), (1, False)}
    assert chosen == explain.choose_activation_images(predictions, 4, seed=1)
    two = explain.choose_activation_images(predictions, 2, seed=1)
    assert {p.true_id for p in two} == {0, 1} and {p.right for p in two} == {True, False}


def test_activation_images_take_what_exists_when_there_are_no_mistakes():
    predictions = [Prediction(f"r{i}", i % 2, 0.1 if i % 2 == 0 else 0.9) for i in range(3)]
    assert len(explain.choose_activation_images(predictions, 5, seed=0)) == 3


def test_output_names_are_safe_and_unique():
    names = explain_files.output_names([Path("a/dog 1.jpg"), Path("b/dog 1.png"), Path("../$(rm).jpg")])
    assert names == ["dog_1_gradcam.png", "dog_1-2_gradcam.png", "rm_gradcam.png"]


# --- the stage on a tiny hand-made run ------------------------------------------------------------


def training_outcome(model_path: str) -> TrainingOutcome:
    return TrainingOutcome(name="final", architecture="tuned", augmented=True, params=0, layers=[],
                           epochs_run=1, best_epoch=1, stopped_early=False, best_val_loss=0.0,
                           best_val_accuracy=0.0, history=[], history_csv="", model_path=model_path,
                           figure=None, wall_s=0.0, images_per_s=0.0, precision="float32")


def evaluate_outcome(predictions: Predictions) -> EvaluateOutcome:
    nothing = Interval(0.0, 0.0)
    no_figure = Figure("evaluate/none.png", "")
    return EvaluateOutcome(
        model="final", classes=CLASSES, n_images=0, accuracy=0.0, accuracy_interval=nothing,
        roc_auc=0.0, roc_auc_interval=nothing, confusion_matrix=[], per_class=[], macro_f1=0.0,
        at_validation_threshold=ThresholdMetrics(0.5, 0.0, [], []), expected_calibration_error=0.0,
        mcnemar=[], leakage_free_accuracy=None, leakage_free_n=0, keras_accuracy=0.0,
        predictions=predictions, predictions_csv="evaluate/predictions.csv",
        confusion_figure=no_figure, roc_figure=no_figure, reliability_figure=no_figure)


def fake_run(root: Path, model_path: Path, mislabelled: int):
    """A run folder with the final model, an image cache of 12 test images and the evaluate
    stage's predictions, in which `mislabelled` images carry the wrong true label (so the
    model's right answers count as confident mistakes)."""
    import shutil

    images, labels = corner_images(6, seed=29)
    paths = [f"{CLASSES[label]}/{CLASSES[label]}_{i:03d}.png" for i, label in enumerate(labels)]
    cache_file = root / "cache" / "images.npy"
    cache_file.parent.mkdir(parents=True)
    np.save(cache_file, images)
    cache = CacheOutcome(str(cache_file), paths, [int(v) for v in labels], SIZE, "test")
    split = SplitOutcome(CLASSES, train=[], validation=[], test=sorted(paths), counts=[], groups=[],
                         digest="test")
    run_dir = root / "run"
    (run_dir / "final").mkdir(parents=True)
    shutil.copy(model_path, run_dir / "final" / "final.keras")
    model = modelfile.load_model(model_path)
    p = model.predict(images.astype(np.float32), verbose=0)[:, 0]
    true = [1 - label if i < mislabelled else label for i, label in enumerate(labels)]
    predictions = Predictions(CLASSES, 0.5, paths, [int(t) for t in true], [float(q) for q in p])
    ctx = StageContext("explain", run_dir / "explain", run_dir, quiet())
    ctx.dir.mkdir(parents=True)
    return ctx, cache, split, training_outcome("final/final.keras"), evaluate_outcome(predictions)


def test_explain_errors_draws_every_figure_and_a_consistent_outcome(tmp_path, trained_path):
    ctx, cache, split, final, evaluation = fake_run(tmp_path, trained_path, mislabelled=3)
    outcome = explain.explain_errors(ctx, cache, split, final, evaluation,
                                     ExplainConfig(max_images=2, activation_images=4), seed=7)

    assert outcome.conv_layers == ["conv1", "conv2"]
    assert outcome.n_misclassified == 3 and outcome.n_test == 12
    assert len(outcome.misclassified) == 3
    confidences = [m.probability_true for m in outcome.misclassified]
    assert confidences == sorted(confidences)  # most confident mistake first
    assert all(m.true_label != m.predicted_label for m in outcome.misclassified)
    assert [m.figure is not None for m in outcome.misclassified] == [True, True, False]  # max_images
    assert len(outcome.kernel_figures) == 2
    assert len(outcome.activation_figures) == 4 == len(outcome.activation_images)
    assert {(i.true_label, i.true_label == i.predicted_label) for i in outcome.activation_images} == {
        ("chihuahua", True), ("muffin", True), ("chihuahua", False), ("muffin", False)}
    assert len(outcome.gradcam_figures) == 2
    assert "predicted class" in outcome.gradcam_figures[0].caption
    assert "true class" in outcome.gradcam_figures[1].caption
    assert len(outcome.method_figures) == 1 and outcome.gallery_figure is not None
    assert outcome.n_gallery == 3
    rows = (ctx.run_dir / outcome.misclassified_csv).read_text().splitlines()
    assert rows[0] == "rank,path,true_label,predicted_label,probability_true"
    assert [row.split(",")[1] for row in rows[1:]] == [m.path for m in outcome.misclassified]

    figures = [*outcome.kernel_figures, *outcome.activation_figures, *outcome.gradcam_figures,
               *outcome.method_figures, outcome.gallery_figure,
               *[m.figure for m in outcome.misclassified if m.figure]]
    for figure in figures:
        assert not Path(figure.path).is_absolute()
        assert (ctx.run_dir / figure.path).is_file(), figure.path
        assert ".png" not in figure.caption and "/" not in figure.caption  # no file names
    assert from_jsonable(ExplainOutcome, to_jsonable(outcome)) == outcome


def test_explain_errors_without_mistakes_still_draws_kernels_and_activations(tmp_path, trained_path):
    ctx, cache, split, final, evaluation = fake_run(tmp_path, trained_path, mislabelled=0)
    outcome = explain.explain_errors(ctx, cache, split, final, evaluation,
                                     ExplainConfig(max_images=2, activation_images=2), seed=7)
    assert outcome.n_misclassified == 0 and outcome.misclassified == []
    assert outcome.gradcam_figures == [] and outcome.method_figures == []
    assert outcome.gallery_figure is None
    assert len(outcome.kernel_figures) == 2 and len(outcome.activation_figures) == 2


def test_explain_errors_refuses_predictions_of_images_outside_the_test_split(tmp_path, trained_path):
    ctx, cache, split, final, evaluation = fake_run(tmp_path, trained_path, mislabelled=0)
    split.test = split.test[1:]
    with pytest.raises(DataError, match="outside the test split"):
        explain.explain_errors(ctx, cache, split, final, evaluation, ExplainConfig(), seed=7)


# --- chimuf predict --explain ----------------------------------------------------------------------


def test_explain_files_reports_a_bad_file_and_explains_the_rest(tmp_path, trained_path):
    good = [make_image(tmp_path / "in" / "dog.png", size=48, corner="top-left"),
            make_image(tmp_path / "in" / "cake.png", size=48, corner="bottom-right", seed=3)]
    bad = tmp_path / "in" / "notes.jpg"
    bad.write_text("not an image")
    stream = io.StringIO()
    outdir = tmp_path / "out"
    results = explain_files.explain_files(trained_path, [good[0], bad, good[1]], outdir, AuditConfig(),
                                    Console(stream=stream, live=False))

    assert [r.path for r in results] == [str(good[0]), str(bad), str(good[1])]
    assert results[1].output == "" and results[1].error and math.isnan(results[1].probability)
    assert "notes.jpg" in stream.getvalue()
    assert [r.label for r in (results[0], results[2])] == ["chihuahua", "muffin"]
    assert sorted(p.name for p in outdir.iterdir()) == ["cake_gradcam.png", "dog_gradcam.png"]
    assert Path(results[0].output) == outdir / "dog_gradcam.png"


def test_explain_errors_agrees_with_what_the_evaluate_stage_wrote(tmp_path, trained_path):
    """Audit, split, cache and evaluate as the study runs them, then explain: the mistakes are
    the off-diagonal cells of the evaluator's confusion matrix."""
    import shutil

    from chimuf.core.config import EvaluateConfig, SplitConfig, TrainConfig
    from chimuf.core.results import TrainOutcome
    from chimuf.data.audit import audit_folder
    from chimuf.data.cache import build_cache
    from chimuf.data.split import split_dataset
    from chimuf.stages import evaluate
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "data", per_class=10)
    audit = audit_folder(data, AuditConfig(), quiet())
    split = split_dataset(audit, SplitConfig(test_fraction=0.5, validation_fraction=0.3), seed=1)
    cache = build_cache(audit, data, SIZE, tmp_path / "cache", quiet())
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    shutil.copy(trained_path, run_dir / "final" / "final.keras")
    final = training_outcome("final/final.keras")
    evaluate_ctx = StageContext("evaluate", run_dir / "evaluate", run_dir, quiet())
    evaluate_ctx.dir.mkdir()
    evaluation = evaluate.evaluate_final(evaluate_ctx, cache, split, audit, final, TrainOutcome([], []),
                                         EvaluateConfig(bootstrap_samples=20), TrainConfig(batch_size=8),
                                         seed=3)
    ctx = StageContext("explain", run_dir / "explain", run_dir, quiet())
    ctx.dir.mkdir()
    outcome = explain.explain_errors(ctx, cache, split, final, evaluation,
                                     ExplainConfig(max_images=2, activation_images=2), seed=3)

    cm = evaluation.confusion_matrix
    assert outcome.n_misclassified == cm[0][1] + cm[1][0]
    assert outcome.n_test == evaluation.n_images == len(split.test)
    assert {m.path for m in outcome.misclassified} <= set(split.test)
    assert len(outcome.activation_figures) == 2


def test_an_odd_batch_is_evened_for_the_gradients_and_its_copy_dropped():
    """TensorFlow 2.21's CPU filter gradient crashed on odd batches of small maps (chimuf.ml.gradcam):
    an odd batch gets its last image again, and only the real images' maps come back."""
    from chimuf.ml.gradcam import even_batch

    pixels = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
    evened, ids = even_batch(pixels, [0, 1, 1])
    assert evened.shape[0] == 4 and (evened[3] == pixels[2]).all() and ids == [0, 1, 1, 1]
    same, same_ids = even_batch(pixels[:2], [0, 1])
    assert same is pixels[:2] or (same == pixels[:2]).all()
    assert same_ids == [0, 1]
