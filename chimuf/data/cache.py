"""Decode once: every usable image as uint8 pixels in one memory-mapped .npy file.

Decoding JPEGs every epoch costs more than the training step of a small CNN on this machine
(DESIGN.md: 120 img/s reading JPEGs against 200 img/s in memory). So the study decodes each
usable file once, stretches it to image_size × image_size (as Keras' `target_size` does) and
keeps the array:

    <cache_dir>/<audit digest[:16]>-<image_size>/
        images.npy    uint8 (N, S, S, 3), row i = paths[i]
        index.json    paths (sorted), labels, image_size, the audit digest, the pixels' SHA-256

The folder is named by the data's identity and the size, so every run on the same data and size
shares it. Both files are written to a temporary name and renamed, index.json last: a folder
with an index.json is complete. 4 733 photos at 128 px take 233 MB.

Training, evaluation and explanation get their pixels from `load_images(cache).rows(paths)`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from chimuf.core.config import AuditConfig
from chimuf.core.errors import DataError, StageError
from chimuf.core.files import atomic_write_json, fsync_dir, read_json
from chimuf.core.results import AuditOutcome, CacheOutcome, FileRecord
from chimuf.data.imagefile import model_array, read_image
from chimuf.data.sources import file_path

if TYPE_CHECKING:
    import numpy as np

    from chimuf.core.console import Console


@dataclass
class ImageSet:
    """The cached pixels, memory-mapped, and which file each row is."""

    images: np.ndarray  # uint8 (N, S, S, 3), read-only memory map
    labels: np.ndarray  # int32 (N,), label id = index into the audit's classes
    paths: list[str]  # row i is this file: its key (chimuf.data.sources), relative to its folder
    _row_of: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._row_of = {path: i for i, path in enumerate(self.paths)}

    def rows(self, paths: list[str]) -> np.ndarray:
        """Row indices (int64) of `paths`, in the given order; use as `images[rows]`."""
        import numpy as np

        try:
            return np.array([self._row_of[p] for p in paths], dtype=np.int64)
        except KeyError as exc:
            raise DataError(
                f"image `{exc.args[0]}` is not in the image cache ({len(self.paths)} images); "
                "the split and the cache come from different audits. Rerun the study so both "
                "are rebuilt from the same data"
            ) from None


def build_cache(audit: AuditOutcome, data_dir: Path, image_size: int, cache_dir: Path,
                console: Console) -> CacheOutcome:
    """Decode the audit's usable files once at `image_size`, or reuse a complete cache."""
    # 1. Rows: the usable files in path order.
    records = sorted((r for r in audit.files if r.verdict != "rejected"), key=lambda r: r.path)
    paths = [r.path for r in records]
    labels = [audit.classes.index(r.label) for r in records]
    folder = Path(cache_dir).resolve() / f"{audit.digest[:16]}-{image_size}"
    images_path, index_path = folder / "images.npy", folder / "index.json"
    wanted = {"paths": paths, "labels": labels, "image_size": image_size,
              "audit_digest": audit.digest}

    # 2. A complete cache of the same rows is reused as it is.
    reused = complete_cache(images_path, index_path, wanted)
    if reused is not None:
        console.info(f"  image cache {folder} reused ({len(paths)} images, {image_size} px)")
        return reused

    # 3. Decode into a temporary file, then rename it into place, index last.
    folder.mkdir(parents=True, exist_ok=True)
    pixels_sha256 = decode_all(records, source_files(audit, Path(data_dir)), image_size, images_path, console)
    atomic_write_json(index_path, {**wanted, "pixels_sha256": pixels_sha256})
    return cache_outcome(images_path, wanted, pixels_sha256)


def load_images(cache: CacheOutcome) -> ImageSet:
    """The cache's pixels, memory-mapped (nothing is read until rows are used)."""
    import numpy as np

    path = Path(cache.images_path)
    expected = (len(cache.paths), cache.image_size, cache.image_size, 3)
    try:
        images = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise DataError(f"image cache `{path}` is missing (deleted since the cache stage ran); "
                        "delete stages/cache.json in the run folder and rerun the study to "
                        "rebuild it") from None
    except (ValueError, OSError) as exc:
        raise DataError(f"image cache `{path}` cannot be read ({exc}); delete it and "
                        "stages/cache.json in the run folder, then rerun the study") from None
    if images.shape != expected or images.dtype != np.uint8:
        raise DataError(f"image cache `{path}` holds {images.dtype} {images.shape}, expected uint8 "
                        f"{expected}; delete it and stages/cache.json in the run folder, then rerun")
    return ImageSet(images, np.asarray(cache.labels, dtype=np.int32), list(cache.paths))


# --- building ----------------------------------------------------------------------------------


def source_files(audit: AuditOutcome, data_dir: Path) -> Callable[[str], Path]:
    """Key → file: under `data_dir`, or under the audit's given test / validation folder."""
    given = {"test": audit.test_dir, "validation": audit.val_dir}
    return lambda key: file_path(data_dir, given, key)


def decode_all(records: list[FileRecord], locate: Callable[[str], Path], image_size: int, images_path: Path,
               console: Console) -> str:
    """Write every file's pixels to `images_path` atomically; return the pixels' SHA-256."""
    import numpy as np

    shape = (len(records), image_size, image_size, 3)
    cfg = recheck_config(records)
    digest = hashlib.sha256()
    # A name no other process uses; numpy creates it with the usual permissions (umask).
    tmp = images_path.parent / f".images.npy.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        with console.progress("decoding images", total=len(records), unit="images") as progress:
            for i, record in enumerate(records):
                array[i] = decode_one(record, locate(record.path), image_size, cfg)  # (S, S, 3)
                digest.update(array[i].tobytes())
                progress.update(1)
        array.flush()
        del array
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        tmp.replace(images_path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(images_path.parent)
    return digest.hexdigest()


def decode_one(record: FileRecord, path: Path, image_size: int, cfg: AuditConfig) -> np.ndarray:
    """One file's pixels, refusing a file whose bytes are no longer those the audit saw."""
    decoded = read_image(path, cfg)
    if decoded.image is None:
        raise DataError(f"image `{path}` passed the audit but now cannot be used "
                        f"({decoded.check.reason}); it changed since the audit. Fix or remove it "
                        "and rerun the study (the audit is redone when files change)")
    if decoded.sha256 != record.sha256:
        raise DataError(f"image `{path}` changed since the audit (its SHA-256 differs); rerun the "
                        "study so the audit sees the current files")
    return model_array(decoded.image, image_size)


def recheck_config(records: list[FileRecord]) -> AuditConfig:
    """Limits that admit exactly what the audit already admitted (the bytes are checked by hash).

    The study's own audit limits (a smoke profile's smaller min_side, say) are not passed here,
    and need not be: a file whose SHA-256 matches the audit's passed them then.
    """
    largest_pixels = max((r.width * r.height for r in records), default=1)
    largest_mb = max((r.size_bytes for r in records), default=1) / 2**20
    return AuditConfig(min_side=1, max_pixels=max(largest_pixels, 1), max_file_mb=largest_mb + 1)


# --- reuse -------------------------------------------------------------------------------------


def complete_cache(images_path: Path, index_path: Path, wanted: dict) -> CacheOutcome | None:
    """The existing cache when its rows, size and pixels are what is wanted; None otherwise."""
    import numpy as np

    try:
        index = read_json(index_path)
    except StageError:
        return None  # a damaged index: rebuild
    if index is None or any(index.get(key) != value for key, value in wanted.items()):
        return None
    try:
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    size = wanted["image_size"]
    if images.shape != (len(wanted["paths"]), size, size, 3) or images.dtype != np.uint8:
        return None
    if pixels_digest(images) != index.get("pixels_sha256"):
        return None
    return cache_outcome(images_path, wanted, index["pixels_sha256"])


def pixels_digest(images: np.ndarray) -> str:
    """SHA-256 of the rows' bytes, row by row (as written), without loading the whole file."""
    digest = hashlib.sha256()
    for row in images:
        digest.update(row.tobytes())
    return digest.hexdigest()


def cache_outcome(images_path: Path, wanted: dict, pixels_sha256: str) -> CacheOutcome:
    identity = hashlib.sha256(f"{wanted['audit_digest']}\0{wanted['image_size']}\0{pixels_sha256}"
                              .encode()).hexdigest()
    return CacheOutcome(
        images_path=str(images_path),
        paths=list(wanted["paths"]),
        labels=list(wanted["labels"]),
        image_size=wanted["image_size"],
        digest=identity,
    )
