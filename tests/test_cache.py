"""cache: pixels equal to load_rgb + resize, reused without decoding, never half written."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import chimuf.data.cache
from chimuf.core.config import AuditConfig
from chimuf.core.console import Console
from chimuf.core.errors import DataError
from chimuf.core.results import AuditOutcome
from chimuf.data.audit import audit_folder
from chimuf.data.cache import build_cache, load_images
from chimuf.data.imagefile import load_rgb, model_array
from tests.conftest import make_image

CFG = AuditConfig(min_side=16)
SIZE = 24


def quiet() -> Console:
    return Console(stream=io.StringIO(), live=False)


@pytest.fixture
def audited(tiny_dataset) -> AuditOutcome:
    (tiny_dataset / "muffin" / "broken.jpg").write_text("not an image")
    make_image(tiny_dataset / "muffin" / "gray.png", mode="L", seed=3)
    return audit_folder(tiny_dataset, CFG, quiet())


def test_rows_hold_the_pixels_load_rgb_and_resize_give(audited, tiny_dataset, tmp_path):
    cache = build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    images = load_images(cache)
    assert images.images.shape == (25, SIZE, SIZE, 3) and images.images.dtype == np.uint8
    assert images.paths == sorted(images.paths) and "muffin/broken.jpg" not in images.paths
    assert images.labels.dtype == np.int32
    assert images.labels.tolist() == [0 if p.startswith("chihuahua/") else 1 for p in images.paths]
    for path in ("chihuahua/chihuahua_004.png", "muffin/gray.png"):
        (row,) = images.rows([path])
        expected = model_array(load_rgb(tiny_dataset / path, CFG), SIZE)
        assert np.array_equal(images.images[row], expected)


def test_cache_path_is_absolute_and_named_by_data_and_size(audited, tiny_dataset, tmp_path):
    cache = build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    path = Path(cache.images_path)
    assert path.is_absolute() and path.name == "images.npy"
    assert path.parent.name == f"{audited.digest[:16]}-{SIZE}"


def test_rows_follow_the_requested_order_and_an_unknown_path_is_a_data_error(audited, tiny_dataset,
                                                                               tmp_path):
    images = load_images(build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet()))
    wanted = ["muffin/muffin_002.png", "chihuahua/chihuahua_000.png"]
    assert [images.paths[i] for i in images.rows(wanted)] == wanted
    with pytest.raises(DataError, match=r"muffin/elsewhere\.png.*not in the image cache"):
        images.rows(["muffin/elsewhere.png"])


def test_second_build_reuses_the_cache_without_decoding(audited, tiny_dataset, tmp_path, monkeypatch):
    first = build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    written = Path(first.images_path).stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(chimuf.data.cache, "read_image", no_decoding)
    second = build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    assert second == first
    assert Path(first.images_path).stat().st_mtime_ns == written


def test_another_size_gets_its_own_cache(audited, tiny_dataset, tmp_path):
    small = build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    large = build_cache(audited, tiny_dataset, 32, tmp_path / "cache", quiet())
    assert small.images_path != large.images_path and small.digest != large.digest
    assert load_images(large).images.shape[1:] == (32, 32, 3)


def test_damaged_pixels_are_noticed_and_rebuilt(audited, tiny_dataset, tmp_path):
    cache = build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    with Path(cache.images_path).open("r+b") as handle:
        handle.seek(-10, 2)
        handle.write(b"\xff" * 10)
    rebuilt = build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    assert rebuilt == cache  # same pixels as before the damage
    expected = model_array(load_rgb(tiny_dataset / rebuilt.paths[-1], CFG), SIZE)
    assert np.array_equal(load_images(rebuilt).images[-1], expected)


def test_an_interrupted_build_leaves_no_cache_and_no_temporary_file(audited, tiny_dataset, tmp_path,
                                                                     monkeypatch):
    real_decode = chimuf.data.cache.decode_one
    calls = []

    def dies_halfway(*args, **kwargs):
        calls.append(1)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(chimuf.data.cache, "decode_one", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    folder = tmp_path / "cache" / f"{audited.digest[:16]}-{SIZE}"
    assert list(folder.iterdir()) == []

    monkeypatch.setattr(chimuf.data.cache, "decode_one", real_decode)
    cache = build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    assert sorted(p.name for p in folder.iterdir()) == ["images.npy", "index.json"]
    assert load_images(cache).images.shape[0] == 25


def test_a_file_changed_since_the_audit_is_a_data_error_naming_it(audited, tiny_dataset, tmp_path):
    make_image(tiny_dataset / "chihuahua" / "chihuahua_005.png", seed=555)
    with pytest.raises(DataError, match=r"chihuahua_005\.png.*changed since the audit"):
        build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())


def test_a_file_broken_since_the_audit_is_a_data_error_naming_it(audited, tiny_dataset, tmp_path):
    (tiny_dataset / "muffin" / "muffin_001.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"muffin_001\.png.*now cannot be used \(empty file"):
        build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())


def test_smaller_images_admitted_by_a_smoke_audit_are_cached(tmp_path):
    for label in ("chihuahua", "muffin"):
        for i in range(3):
            make_image(tmp_path / "data" / label / f"{i}.png", size=20, seed=i)
    audit = audit_folder(tmp_path / "data", AuditConfig(min_side=16), quiet())
    cache = build_cache(audit, tmp_path / "data", 16, tmp_path / "cache", quiet())
    assert load_images(cache).images.shape == (6, 16, 16, 3)


def test_a_deleted_cache_file_is_a_data_error_saying_what_to_do(audited, tiny_dataset, tmp_path):
    cache = build_cache(audited, tiny_dataset, SIZE, tmp_path / "cache", quiet())
    Path(cache.images_path).unlink()
    with pytest.raises(DataError, match=r"images\.npy.*missing.*stages/cache\.json"):
        load_images(cache)
