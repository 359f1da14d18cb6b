"""The pretrained baseline: a frozen keras.applications backbone, a new head, then fine-tuning.

No test downloads anything: the backbone is built without weights, and its "pretrained" weights
file is one these tests write, which is also how a user without internet passes them.
"""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest

from chimuf.core.config import AugmentConfig, PretrainedConfig, TrainConfig
from chimuf.core.console import Console
from chimuf.core.engine import StageContext
from chimuf.core.errors import ConfigError, ModelError
from chimuf.core.results import CacheOutcome, SplitOutcome
from chimuf.ml.architectures.pretrained import build_pretrained, unfreeze_top
from chimuf.ml.modelfiles import modelfile

SIZE = 32  # the smallest input MobileNetV3 accepts
SMALL = PretrainedConfig(backbone="mobilenet_v3_small", epochs=2, fine_tune_epochs=1, fine_tune_layers=6)


def trainable_names(model) -> set[str]:
    return {layer.name for layer in model.layers if layer.trainable and layer.weights}


def test_the_backbone_is_frozen_under_a_new_sigmoid_head_and_loads_in_safe_mode(tmp_path):
    from chimuf.ml.architectures.models import conv_layer_names

    model = build_pretrained(SIZE, SMALL, None)
    assert trainable_names(model) == {"output"}  # only the head learns at first
    assert model.output_shape == (None, 1) and model.layers[-1].name == "output"
    assert conv_layer_names(model)[-1] == "conv_1"  # Grad-CAM's layer, found by name
    path = tmp_path / "pretrained.keras"
    model.save(path)
    assert modelfile.load_model(path).count_params() == model.count_params()


def test_fine_tuning_unfreezes_the_last_layers_but_not_batch_normalisation():
    import keras

    model = build_pretrained(SIZE, SMALL, None)
    trainable = unfreeze_top(model, 12)
    now = [layer for layer in model.layers if layer.trainable and layer.weights]
    assert trainable == len(now) > 1
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in now)
    first_trainable = min(model.layers.index(layer) for layer in now)
    assert first_trainable >= len(model.layers) - 3 - 12  # only the top of the backbone
    assert unfreeze_top(build_pretrained(SIZE, SMALL, None), 0) == 1  # the head alone


def test_an_unknown_backbone_or_a_wrong_weights_file_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrained\.backbone"):
        build_pretrained(SIZE, replace(SMALL, backbone="resnet9000"), None)
    import keras

    wrong = tmp_path / "another_model.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(wrong)
    with pytest.raises(ModelError, match="--weights PATH") as caught:
        build_pretrained(SIZE, SMALL, str(wrong))
    assert "\n" not in str(caught.value)


def backbone_weights(tmp_path):
    """A no-top weights file of the backbone, as `chimuf study --weights PATH` takes."""
    import keras

    backbone = keras.applications.MobileNetV3Small(input_shape=(SIZE, SIZE, 3), include_top=False,
                                                   weights=None, include_preprocessing=True)
    path = tmp_path / "mobilenet_v3_small_notop.weights.h5"
    backbone.save_weights(path)
    return path, backbone


def test_a_weights_file_is_loaded_into_the_backbone(tmp_path):
    path, backbone = backbone_weights(tmp_path)
    model = build_pretrained(SIZE, SMALL, str(path))
    np.testing.assert_array_equal(model.get_layer("conv_1").get_weights()[0],
                                  backbone.get_layer("conv_1").get_weights()[0])


@pytest.fixture
def tiny_cache(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 90, (20, SIZE, SIZE, 3), dtype=np.uint8)
    labels = [i % 2 for i in range(20)]
    for i, label in enumerate(labels):
        images[i, :10, :10] = 230 if label == 0 else 0
    np.save(tmp_path / "images.npy", images)
    paths = [f"{'ab'[label]}/{i:02d}.png" for i, label in enumerate(labels)]
    cache = CacheOutcome(str(tmp_path / "images.npy"), paths, labels, SIZE, "d")
    split = SplitOutcome(["a", "b"], train=paths[:12], validation=paths[12:16], test=paths[16:],
                         counts=[], groups=[], digest="s")
    return cache, split


@pytest.mark.slow
def test_the_pretrained_stage_trains_the_head_then_fine_tunes_and_exports(tmp_path, tiny_cache):
    from chimuf.ml.gradcam import gradcam_maps, logit_model
    from chimuf.ml.modelfiles.export import export_model
    from chimuf.stages.train import train_pretrained

    cache, split = tiny_cache
    path, _ = backbone_weights(tmp_path)
    cfg = replace(SMALL, weights=str(path))
    run_dir = tmp_path / "run"
    ctx = StageContext("pretrained", run_dir / "pretrained", run_dir,
                       Console(stream=io.StringIO(), live=False))
    ctx.dir.mkdir(parents=True)
    train = TrainConfig(batch_size=4, precision="float32")
    outcome = train_pretrained(ctx, cache, split, cfg, train, AugmentConfig(), seed=5)
    assert outcome.name == "pretrained" and outcome.architecture == "pretrained"
    assert outcome.epochs_run == cfg.fine_tune_epochs  # the fine-tuning phase's own history
    assert (ctx.dir / "pretrained_head.keras").is_file()  # the head phase, kept and resumable
    model = modelfile.load_model(run_dir / outcome.model_path)
    assert len(trainable_names(model)) > 1  # saved after fine-tuning: the top is unfrozen
    assert modelfile.read_classes(run_dir / outcome.model_path) == ["a", "b"]

    pixels = np.load(cache.images_path)[16:]
    maps = gradcam_maps(logit_model(model), pixels, ["conv_1"], [0, 1, 0, 1])["conv_1"]
    assert maps.shape == (4, SIZE, SIZE) and np.isfinite(maps).all()
    check = export_model(run_dir / outcome.model_path, "tflite", tmp_path / "export", pixels)
    assert check.max_abs_difference < 1e-4
