"""Opening untrusted image files safely: every file gets a verdict and a reason a person can read.

Data folders come from the internet. A file may be empty, text named `.jpg`, a truncated JPEG, a
PNG whose header claims 100 000 × 100 000 pixels (a decompression bomb), or a 16-bit, CMYK,
palette or transparent image that a CNN expecting 8-bit RGB would silently misread. So a file is
checked in a fixed order, cheapest first, and the first failed check is its reason:

    hidden name → dangling link → not a regular file → empty → too large on disk
      → content not JPEG/PNG/BMP/GIF/WebP → too many pixels (header only) → too small
      → full decode (truncated or corrupt) → mode conversion to 8-bit RGB

Verdicts: "usable" (8-bit RGB as stored), "converted" (usable after a conversion the reason
names) and "rejected". `load_rgb` is what every stage and command that needs pixels calls, and
`model_array` turns its image into the array a model is fed, so the study, `chimuf evaluate` and
`chimuf predict` see identical pixels.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import stat
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from chimuf.core.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from chimuf.core.config import AuditConfig

# Detected by content, never by extension. Pillow's names for them.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")
MIN_PILLOW = (12, 2)  # older releases have known decoder CVEs
WHITE = (255, 255, 255, 255)
# EXIF orientation tag.
ORIENTATION_TAG = 0x0112
# Modes with an alpha channel, or a palette with a transparent entry, as the reason names them.
ALPHA_NAMES = {
    "RGBA": "alpha (RGBA)",
    "RGBa": "alpha (RGBa)",
    "LA": "grayscale with alpha (LA)",
    "La": "grayscale with alpha (La)",
    "PA": "palette with alpha (PA)",
    "P": "palette with transparency (P)",
}


@dataclass
class ImageCheck:
    """The verdict on one file, with what its header said (zeros when it was never opened)."""

    verdict: str  # "usable" | "converted" | "rejected"
    reason: str  # why converted or rejected; "" when usable as is
    format: str = ""  # Pillow format (JPEG, PNG, ...), "" when not recognised
    mode: str = ""  # Pillow mode as stored (RGB, L, P, RGBA, CMYK, I;16, ...)
    width: int = 0  # as stored, before EXIF orientation
    height: int = 0
    size_bytes: int = 0


@dataclass
class DecodedImage:
    """One file read once: its verdict, its bytes' SHA-256 and, unless rejected, its RGB pixels."""

    check: ImageCheck
    sha256: str  # "" when the file was not read (hidden, huge, not a regular file)
    image: Image.Image | None  # 8-bit RGB, upright; None when rejected


def inspect_image(path: Path, cfg: AuditConfig) -> ImageCheck:
    """The verdict on one file: usable, converted (and how) or rejected (and why)."""
    return read_image(path, cfg).check


def load_rgb(path: Path, cfg: AuditConfig) -> Image.Image:
    """The file's pixels as 8-bit RGB: alpha on white, 16 bits scaled, EXIF orientation applied.

    Raises DataError naming the file and the reason when the audit would reject it.
    """
    decoded = read_image(path, cfg)
    if decoded.image is None:
        raise DataError(f"image `{path}` cannot be used: {decoded.check.reason}")
    return decoded.image


def model_array(image: Image.Image, image_size: int) -> np.ndarray:
    """uint8 (image_size, image_size, 3): stretched to a square, as Keras' `target_size` does.

    Bicubic filtering with Pillow's anti-aliasing (not Keras' default nearest neighbour), so a
    256-pixel photo shrunk to 64 keeps its detail instead of aliasing.
    """
    import numpy as np
    from PIL import Image

    resized = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


# --- the checks, in order ----------------------------------------------------------------------


def read_image(path: Path, cfg: AuditConfig) -> DecodedImage:
    """Run every check on `path`, reading the file at most once."""
    check_pillow()
    path = Path(path)

    # 1. Checks on the directory entry alone: nothing is read.
    try:
        info = path.lstat()
    except FileNotFoundError:
        return rejected("file not found")
    except OSError as exc:
        return rejected(f"cannot be read ({exc.strerror})")
    size = info.st_size
    if path.name.startswith("."):
        return rejected("hidden file (name starts with '.')", size)
    if stat.S_ISLNK(info.st_mode):
        if not path.exists():
            return rejected("dangling symbolic link (its target does not exist)")
        info = path.stat()
        size = info.st_size
    if not stat.S_ISREG(info.st_mode):
        return rejected("not a regular file", size)
    if size == 0:
        return rejected("empty file (0 bytes)", 0, hashlib.sha256(b"").hexdigest())
    if size > cfg.max_file_mb * 1024 * 1024:
        return rejected(f"file of {size / 2**20:.1f} MiB is larger than the limit of "
                        f"{cfg.max_file_mb:g} MiB (audit.max_file_mb); not read", size)

    # 2. Read it once: the bytes give the SHA-256 and the pixels.
    try:
        data = path.read_bytes()
    except OSError as exc:
        return rejected(f"cannot be read ({exc.strerror})", size)
    sha256 = hashlib.sha256(data).hexdigest()
    check, image = decode(data, cfg)
    check.size_bytes = len(data)
    return DecodedImage(check, sha256, image)


def decode(data: bytes, cfg: AuditConfig) -> tuple[ImageCheck, Image.Image | None]:
    """Header checks, then a full decode, then conversion to RGB."""
    from PIL import Image, UnidentifiedImageError

    with strict_decoding():
        # 3. What is it? Only the accepted formats' parsers ever see the bytes.
        try:
            opened = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except UnidentifiedImageError:
            return rejected_check("not a JPEG, PNG, BMP, GIF or WebP image (checked by content, "
                                  "not by the name)"), None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return rejected_check(f"decompression bomb refused unread: {exc}"), None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            return rejected_check(f"unreadable image header ({exc})"), None

        with opened as image:
            header = ImageCheck("usable", "", image.format or "", image.mode, *image.size)
            width, height = image.size

            # 4. Size from the header alone: a bomb is never decoded.
            if width * height > cfg.max_pixels:
                return refuse(header, f"{width}×{height} = {width * height:,} pixels is more than "
                                      f"the limit of {cfg.max_pixels:,} (audit.max_pixels); not "
                                      "decoded"), None
            if min(width, height) < cfg.min_side:
                return refuse(header, f"{width}×{height} pixels: a side is shorter than "
                                      f"{cfg.min_side} (audit.min_side)"), None

            # 5. Full decode of the first frame: a truncated or corrupt file fails here.
            try:
                animated = bool(getattr(image, "is_animated", False))
                if animated:
                    image.seek(0)
                image.load()
                rgb, notes = to_rgb(image)
                rgb, exif_note = upright(image, rgb)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                return refuse(header, f"decompression bomb refused: {exc}"), None
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
                return refuse(header, f"truncated or corrupt {header.format} ({exc})"), None

    # 6. Converted when anything had to change to make it plain 8-bit RGB.
    if animated:
        notes.append(f"animated {header.format}: first frame only")
    if exif_note:
        notes.append(exif_note)
    if notes:
        header.verdict, header.reason = "converted", "; ".join(notes)
    return header, rgb


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """Truncated files fail instead of being padded; Pillow's bomb warning becomes an error.

    `ImageFile.LOAD_TRUNCATED_IMAGES` is a Pillow global that other code may have turned on; it
    is forced off for the duration and restored afterwards.
    """
    from PIL import Image, ImageFile

    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """8-bit RGB pixels of a loaded image and what was done to get them ([] when nothing)."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image.convert("RGB"), []
    if mode.startswith("I;16") or mode in ("I", "F"):
        bits = "16-bit" if mode.startswith("I;16") else ("32-bit integer" if mode == "I" else
                                                         "32-bit float")
        return scale_to_8bit(image).convert("RGB"), [f"{bits} ({mode}) → 8-bit RGB"]
    if (mode in ALPHA_NAMES and mode != "P") or "transparency" in image.info:
        # Transparent pixels become white, as a browser shows them on a white page.
        name = ALPHA_NAMES.get(mode, f"transparency ({mode})")
        background = Image.new("RGBA", image.size, WHITE)
        composed = Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        return composed, [f"{name} → RGB on white"]
    if mode in ("L", "1"):
        name = "grayscale" if mode == "L" else "black and white"
        return image.convert("RGB"), [f"{name} ({mode}) → RGB"]
    if mode == "P":
        return image.convert("RGB"), ["palette (P) → RGB"]
    if mode == "CMYK":
        return image.convert("RGB"), ["CMYK → RGB"]
    return image.convert("RGB"), [f"{mode} → RGB"]


SCALE_ROWS_PIXELS = 2**20  # pixels converted at a time by scale_to_8bit


def scale_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) gray to 8-bit by scaling 0..65535 onto 0..255, not by clipping.

    Pillow's own `convert("L")` clips a 16-bit image at 255, turning most photos white. Modes I
    and F carry 16-bit data when they come from 16-bit PNGs; values already within 0..255 are
    kept as they are. Done a band of rows at a time: at audit.max_pixels, converting the whole
    image in float64 at once cost over 1 GB; the bands cost a few MB beside the 8-bit result.
    """
    import numpy as np
    from PIL import Image

    width, height = image.size
    rows = max(1, SCALE_ROWS_PIXELS // max(width, 1))
    bands = [(top, min(top + rows, height)) for top in range(0, height, rows)]

    def band(top: int, bottom: int) -> np.ndarray:
        return np.asarray(image.crop((0, top, width, bottom)))

    wide = image.mode.startswith("I;16") or any(band(t, b).max(initial=0) > 255 for t, b in bands)
    out = np.empty((height, width), dtype=np.uint8)
    for top, bottom in bands:
        values = band(top, bottom)
        if wide:  # v / 257 rounded: (v + 128) // 257 exactly for whole numbers (never a tie)
            values = np.clip(np.rint(values) if values.dtype.kind == "f" else values, 0, 65535)
            out[top:bottom] = (values.astype(np.int32) + 128) // 257
        else:
            out[top:bottom] = np.clip(np.rint(values), 0, 255)
    return Image.fromarray(out, "L")


def upright(stored: Image.Image, rgb: Image.Image) -> tuple[Image.Image, str]:
    """`rgb` turned as the camera's EXIF orientation says; a note when that tag is unreadable."""
    from PIL import Image

    try:
        orientation = stored.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, struct.error, KeyError, TypeError):
        return rgb, "EXIF metadata unreadable: orientation left as stored"
    transpose = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return (rgb if transpose is None else rgb.transpose(transpose)), ""


# --- small helpers -----------------------------------------------------------------------------


def check_pillow() -> None:
    """Refuse to decode untrusted files with a Pillow that has known decoder CVEs."""
    import PIL

    numbers = []
    for part in PIL.__version__.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits or 0))
    if tuple(numbers) < MIN_PILLOW:
        raise DataError(
            f"Pillow {PIL.__version__} is installed; chimuf needs Pillow >= "
            f"{'.'.join(map(str, MIN_PILLOW))} to open untrusted images (older decoders have known "
            "security flaws). Upgrade it: pip install -U 'pillow>=12.2'"
        )


def rejected(reason: str, size_bytes: int = 0, sha256: str = "") -> DecodedImage:
    return DecodedImage(rejected_check(reason, size_bytes), sha256, None)


def rejected_check(reason: str, size_bytes: int = 0) -> ImageCheck:
    return ImageCheck("rejected", reason, size_bytes=size_bytes)


def refuse(header: ImageCheck, reason: str) -> ImageCheck:
    header.verdict, header.reason = "rejected", reason
    return header
