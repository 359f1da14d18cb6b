"""imagefile: one test per kind of bad or unusual file, and the pixels load_rgb gives."""

from __future__ import annotations

import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from chimuf.core.config import AuditConfig
from chimuf.core.errors import DataError
from chimuf.data.imagefile import inspect_image, load_rgb, model_array, read_image
from tests.conftest import make_image

CFG = AuditConfig(min_side=16)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header claims width × height RGB pixels, with no pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def noisy_jpeg(path: Path, size: int = 64) -> Path:
    pixels = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return path


# --- usable and converted ----------------------------------------------------------------------


def test_rgb_jpeg_is_usable_as_is(tmp_path):
    check = inspect_image(noisy_jpeg(tmp_path / "a.jpg"), CFG)
    assert (check.verdict, check.reason, check.format, check.mode) == ("usable", "", "JPEG", "RGB")
    assert (check.width, check.height) == (64, 64)
    assert check.size_bytes == (tmp_path / "a.jpg").stat().st_size


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "WEBP"])
def test_other_accepted_formats_are_usable(tmp_path, fmt):
    path = tmp_path / "picture.img"  # the name says nothing; the content decides
    options = {"lossless": True} if fmt == "WEBP" else {}
    Image.new("RGB", (32, 32), (9, 99, 199)).save(path, format=fmt, **options)
    check = inspect_image(path, CFG)
    assert (check.verdict, check.format) == ("usable", fmt)
    assert tuple(np.asarray(load_rgb(path, CFG))[3, 3]) == (9, 99, 199)


def test_grayscale_is_converted_to_rgb(tmp_path):
    path = make_image(tmp_path / "g.png", mode="L")
    check = inspect_image(path, CFG)
    assert (check.verdict, check.reason, check.mode) == ("converted", "grayscale (L) → RGB", "L")
    assert load_rgb(path, CFG).mode == "RGB"


def test_palette_is_converted_to_rgb(tmp_path):
    check = inspect_image(make_image(tmp_path / "p.png", mode="P"), CFG)
    assert (check.verdict, check.reason) == ("converted", "palette (P) → RGB")


def test_rgba_is_composited_on_white(tmp_path):
    pixels = np.zeros((32, 32, 4), dtype=np.uint8)
    pixels[..., 0] = 200  # red everywhere, but only the left half is opaque
    pixels[:, :16, 3] = 255
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    check = inspect_image(tmp_path / "a.png", CFG)
    assert (check.verdict, check.reason) == ("converted", "alpha (RGBA) → RGB on white")
    rgb = np.asarray(load_rgb(tmp_path / "a.png", CFG))
    assert tuple(rgb[5, 5]) == (200, 0, 0)
    assert tuple(rgb[5, 25]) == (255, 255, 255)


def test_grayscale_with_alpha_is_composited_on_white(tmp_path):
    pixels = np.zeros((32, 32, 2), dtype=np.uint8)  # black, fully transparent
    Image.fromarray(pixels, "LA").save(tmp_path / "la.png")
    check = inspect_image(tmp_path / "la.png", CFG)
    assert check.reason == "grayscale with alpha (LA) → RGB on white"
    assert np.asarray(load_rgb(tmp_path / "la.png", CFG)).min() == 255


def test_cmyk_jpeg_is_converted(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "c.jpg", format="JPEG")
    check = inspect_image(tmp_path / "c.jpg", CFG)
    assert (check.verdict, check.reason, check.mode) == ("converted", "CMYK → RGB", "CMYK")
    red, green, blue = np.asarray(load_rgb(tmp_path / "c.jpg", CFG))[16, 16].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_16bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.zeros((32, 32), dtype=np.uint16)
    values[:, :8], values[:, 8:16], values[:, 16:24], values[:, 24:] = 65535, 32896, 2570, 0
    Image.fromarray(values).save(tmp_path / "deep.png")
    check = inspect_image(tmp_path / "deep.png", CFG)
    assert check.mode == "I;16"
    assert (check.verdict, check.reason) == ("converted", "16-bit (I;16) → 8-bit RGB")
    row = np.asarray(load_rgb(tmp_path / "deep.png", CFG))[0, :, 0]
    assert (row[0], row[8], row[16], row[24]) == (255, 128, 10, 0)


def test_animated_gif_uses_the_first_frame_and_says_so(tmp_path):
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    check = inspect_image(tmp_path / "anim.gif", CFG)
    assert check.verdict == "converted"
    assert "animated GIF: first frame only" in check.reason
    red, _, blue = np.asarray(load_rgb(tmp_path / "anim.gif", CFG))[0, 0].astype(int)
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (48, 32), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to show upright
    image.save(tmp_path / "turned.jpg", exif=exif)
    check = inspect_image(tmp_path / "turned.jpg", CFG)
    assert (check.verdict, check.width, check.height) == ("usable", 48, 32)
    assert load_rgb(tmp_path / "turned.jpg", CFG).size == (32, 48)


# --- rejected ----------------------------------------------------------------------------------


def test_zero_byte_file_is_rejected_as_empty(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    check = inspect_image(tmp_path / "empty.jpg", CFG)
    assert (check.verdict, check.reason) == ("rejected", "empty file (0 bytes)")


def test_text_named_jpg_is_rejected_by_content(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture at all\n")
    check = inspect_image(tmp_path / "notes.jpg", CFG)
    assert check.verdict == "rejected"
    assert "not a JPEG, PNG, BMP, GIF or WebP image" in check.reason


def test_format_outside_the_accepted_list_is_rejected(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "scan.jpg", format="TIFF")
    check = inspect_image(tmp_path / "scan.jpg", CFG)
    assert check.verdict == "rejected" and "checked by content" in check.reason


def test_truncated_jpeg_is_rejected_not_padded(tmp_path, monkeypatch):
    whole = noisy_jpeg(tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else turned it on
    check = inspect_image(tmp_path / "cut.jpg", CFG)
    assert check.verdict == "rejected"
    assert check.reason.startswith("truncated or corrupt JPEG")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


def test_corrupt_png_is_rejected(tmp_path):
    data = bytearray(make_image(tmp_path / "ok.png").read_bytes())
    start = data.index(b"IDAT") + 20
    data[start:start + 200] = bytes(200)  # zero out part of the compressed pixels
    (tmp_path / "bad.png").write_bytes(bytes(data))
    check = inspect_image(tmp_path / "bad.png", CFG)
    assert check.verdict == "rejected"
    assert check.reason.startswith("truncated or corrupt PNG")


def test_tiny_image_is_rejected(tmp_path):
    check = inspect_image(make_image(tmp_path / "t.png", size=12), CFG)
    assert check.verdict == "rejected"
    assert check.reason == "12×12 pixels: a side is shorter than 16 (audit.min_side)"


def test_decompression_bomb_header_is_rejected_without_decoding(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    started = time.monotonic()
    check = inspect_image(path, CFG)
    assert time.monotonic() - started < 1.0
    assert check.verdict == "rejected"
    assert "decompression bomb" in check.reason


def test_more_pixels_than_the_limit_is_rejected_from_the_header(tmp_path):
    # 8 000 × 8 000 = 64 M pixels: under Pillow's own limit, over audit.max_pixels (50 M). The
    # file holds no pixel data, so any decode attempt would say "truncated" instead.
    check = inspect_image(png_header_only(tmp_path / "big.png", 8000, 8000), AuditConfig())
    assert check.verdict == "rejected"
    assert "64,000,000 pixels is more than the limit of 50,000,000" in check.reason
    assert (check.width, check.height) == (8000, 8000)


def test_file_larger_than_the_limit_is_rejected_unread(tmp_path):
    path = noisy_jpeg(tmp_path / "big.jpg", size=64)
    check = inspect_image(path, AuditConfig(min_side=16, max_file_mb=0.001))
    assert check.verdict == "rejected"
    assert "larger than the limit of 0.001 MiB (audit.max_file_mb); not read" in check.reason
    assert read_image(path, AuditConfig(min_side=16, max_file_mb=0.001)).sha256 == ""


def test_hidden_file_is_rejected(tmp_path):
    check = inspect_image(make_image(tmp_path / ".thumb.png"), CFG)
    assert (check.verdict, check.reason) == ("rejected", "hidden file (name starts with '.')")


def test_dangling_symlink_is_rejected(tmp_path):
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    check = inspect_image(tmp_path / "gone.jpg", CFG)
    assert check.verdict == "rejected" and "dangling symbolic link" in check.reason


def test_symlink_to_an_image_is_followed(tmp_path):
    target = make_image(tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(target)
    assert inspect_image(tmp_path / "link.png", CFG).verdict == "usable"


def test_load_rgb_names_the_file_and_reason_when_rejected(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg.*empty file \(0 bytes\)"):
        load_rgb(tmp_path / "empty.jpg", CFG)


def test_old_pillow_is_refused(tmp_path, monkeypatch):
    import PIL

    monkeypatch.setattr(PIL, "__version__", "12.1.0")
    with pytest.raises(DataError, match=r"Pillow 12\.1\.0.*pillow>=12\.2"):
        load_rgb(make_image(tmp_path / "a.png"), CFG)


# --- the array a model gets --------------------------------------------------------------------


def test_model_array_stretches_to_a_uint8_square(tmp_path):
    Image.new("RGB", (60, 30), (1, 2, 3)).save(tmp_path / "wide.png")
    array = model_array(load_rgb(tmp_path / "wide.png", CFG), 24)
    assert array.shape == (24, 24, 3) and array.dtype == np.uint8
    assert tuple(array[12, 12]) == (1, 2, 3)


def test_importing_the_data_modules_loads_no_tensorflow_or_matplotlib():
    code = ("import sys, chimuf.data.imagefile, chimuf.data.audit, chimuf.data.split, chimuf.data.cache; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
