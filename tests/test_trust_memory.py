"""Memory bombs: a model whose activations outgrow memory, a 16-bit image at the pixel limit."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from chimuf.core.errors import ModelError

# --- the activation bomb ---------------------------------------------------------------------------


def bomb_model(size: int = 16, upsample: int = 8, filters: int = 16):
    """A few kB of weights whose UpSampling layer holds (size*upsample)² × filters values per image."""
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(filters, 3, padding="same")(inputs)
    x = keras.layers.UpSampling2D(upsample)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs)


def test_the_largest_activation_comes_from_the_models_config():
    from chimuf.ml.modelfiles import predictor

    assert predictor.largest_activation(bomb_model(16, 8, 16)) == (16 * 8) ** 2 * 16


def test_the_prediction_batch_shrinks_to_fit_the_budget_before_any_image_is_fed(monkeypatch):
    from chimuf.ml.modelfiles import predictor

    model = bomb_model(16, 8, 16)  # 262 144 values, 2 MiB per image with input and output alive
    per_image = (16 * 8) ** 2 * 16 * 4 * 2
    monkeypatch.setattr(predictor, "PREDICT_MEMORY_BYTES", 3 * per_image)
    assert predictor.prediction_batch(model) == 3
    fed: list[int] = []
    real = predictor.run_batch
    monkeypatch.setattr(predictor, "run_batch", lambda m, batch: fed.append(len(batch)) or real(m, batch))
    pixels = np.zeros((7, 16, 16, 3), dtype=np.uint8)
    assert predictor.probabilities_of(model, pixels).shape == (7,)
    assert fed == [3, 3, 1]  # never the 64 of a full batch


def test_a_model_whose_single_image_exceeds_the_budget_is_refused_unfed(monkeypatch):
    from chimuf.ml.modelfiles import predictor

    model = bomb_model(16, 8, 16)
    monkeypatch.setattr(predictor, "PREDICT_MEMORY_BYTES", 2**20)
    monkeypatch.setattr(predictor, "run_batch", lambda m, batch: pytest.fail("an image was fed"))
    with pytest.raises(ModelError, match="more than the 1,048,576-byte prediction budget"):
        predictor.probabilities_of(model, np.zeros((1, 16, 16, 3), dtype=np.uint8))


def test_chimuf_predict_on_a_saved_bomb_is_one_line(tmp_path, monkeypatch, capsys):
    from chimuf.cli import main
    from chimuf.ml.modelfiles import predictor
    from tests.conftest import make_image

    model_path = tmp_path / "bomb.keras"
    bomb_model(32, 8, 16).save(model_path)
    image = tmp_path / "photo.png"
    make_image(image, size=48, corner="top-left", seed=1)
    monkeypatch.setattr(predictor, "PREDICT_MEMORY_BYTES", 2**20)
    assert main(["predict", str(model_path), str(image)]) != 0
    err = capsys.readouterr().err
    assert "prediction budget" in err and "Traceback" not in err


# --- a 16-bit PNG scaled to 8 bits -----------------------------------------------------------------


def test_scaling_16_bits_to_8_costs_a_few_bytes_a_pixel_not_dozens():
    from PIL import Image

    from chimuf.data.imagefile import scale_to_8bit

    side = 3000  # 9 M pixels; at audit.max_pixels (50 M) the old way cost 1.27 GB
    image = Image.new("I;16", (side, side), 65535)
    tracemalloc.start()
    try:
        scaled = scale_to_8bit(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scaled.mode == "L" and scaled.getpixel((side - 1, side - 1)) == 255
    assert peak / side**2 < 4, f"{peak / side**2:.1f} bytes per pixel"  # the old way: 24.8


def test_scaling_keeps_the_values_of_the_whole_image_way(tmp_path: Path):
    from PIL import Image

    from chimuf.data import imagefile

    values = np.array([[0, 128, 129, 385, 65535], [257, 256, 1000, 40000, 65534]], dtype=np.uint16)
    image = Image.fromarray(values)  # mode I;16
    expected = np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)
    old_rows = imagefile.SCALE_ROWS_PIXELS
    try:
        imagefile.SCALE_ROWS_PIXELS = 5  # one row a band: the bands meet exactly
        assert np.array_equal(np.asarray(imagefile.scale_to_8bit(image)), expected)
    finally:
        imagefile.SCALE_ROWS_PIXELS = old_rows
    small = Image.fromarray(np.array([[0, 17, 255]], dtype=np.int32))  # mode I, 8-bit data
    assert np.asarray(imagefile.scale_to_8bit(small)).tolist() == [[0, 17, 255]]
