"""audit: the folder layout, a record per file, duplicates, errors, and the readable summary."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from chimuf.core.config import AuditConfig
from chimuf.core.console import Console
from chimuf.core.errors import DataError
from chimuf.core.results import AuditOutcome, dumps, from_jsonable
from chimuf.data.audit import audit_folder, close_pairs, listing_fingerprint, perceptual_hash, summary
from tests.conftest import make_image

CFG = AuditConfig(min_side=16)
MARKUP_NAME = "<img src=x onerror=alert(1)> $x$ *star* é 狗.png"


def quiet() -> Console:
    return Console(stream=io.StringIO(), live=False)


def audit(folder: Path, cfg: AuditConfig = CFG, **kwargs) -> AuditOutcome:
    return audit_folder(folder, cfg, quiet(), **kwargs)


def record(outcome: AuditOutcome, path: str):
    return next(r for r in outcome.files if r.path == path)


def photo(path: Path, seed: int, size: int = 64) -> Path:
    """A smooth random picture (blurred noise): resizing and re-encoding keep its look."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


# --- layout ------------------------------------------------------------------------------------


def test_classes_are_the_sorted_subfolders_and_every_file_is_recorded(tiny_dataset):
    outcome = audit(tiny_dataset)
    assert outcome.classes == ["chihuahua", "muffin"]
    assert len(outcome.files) == 24
    assert [(c.label, c.usable, c.converted, c.rejected) for c in outcome.counts] == [
        ("chihuahua", 12, 0, 0), ("muffin", 12, 0, 0)]
    first = record(outcome, "chihuahua/chihuahua_000.png")
    assert (first.label, first.verdict, first.format, first.width) == ("chihuahua", "usable", "PNG", 48)
    assert len(first.sha256) == 64 and len(first.phash) == 16
    assert outcome.data_dir == str(tiny_dataset.resolve())


def test_nested_folders_are_walked_and_a_top_level_file_is_reported(tiny_dataset):
    make_image(tiny_dataset / "chihuahua" / "extra" / "deeper" / "deep.png")
    (tiny_dataset / "README.txt").write_text("about the data")
    outcome = audit(tiny_dataset)
    deep = record(outcome, "chihuahua/extra/deeper/deep.png")
    assert (deep.label, deep.verdict) == ("chihuahua", "usable")
    assert any("file at top level ignored: README.txt" in s for s in outcome.skipped)


def test_a_folder_link_back_up_is_a_loop_skipped_with_its_reason(tiny_dataset):
    (tiny_dataset / "muffin" / "again").symlink_to(tiny_dataset / "muffin", target_is_directory=True)
    (tiny_dataset / "muffin" / ".cache").mkdir()
    make_image(tiny_dataset / "muffin" / ".cache" / "thumb.png")
    outcome = audit(tiny_dataset)
    assert len(outcome.files) == 24  # nothing walked twice, nothing from the hidden folder
    assert any("muffin/again/ not walked: it leads back to a folder above it (a loop)" in s
               for s in outcome.skipped)
    assert any("hidden folder muffin/.cache/ not walked" in s for s in outcome.skipped)


def test_listing_fingerprint_sees_a_file_added_in_a_nested_folder(tiny_dataset):
    make_image(tiny_dataset / "chihuahua" / "a" / "one.png")
    before = listing_fingerprint(tiny_dataset)
    make_image(tiny_dataset / "chihuahua" / "a" / "two.png")
    assert listing_fingerprint(tiny_dataset) != before


def test_hidden_files_are_recorded_as_rejected(tiny_dataset):
    (tiny_dataset / "muffin" / ".DS_Store").write_bytes(b"\0\1binary")
    outcome = audit(tiny_dataset)
    hidden = record(outcome, "muffin/.DS_Store")
    assert (hidden.verdict, hidden.reason) == ("rejected", "hidden file (name starts with '.')")
    assert outcome.counts[1].rejected == 1


def test_names_with_spaces_unicode_and_markup_are_audited(tiny_dataset):
    make_image(tiny_dataset / "muffin" / MARKUP_NAME, seed=77)
    outcome = audit(tiny_dataset)
    assert record(outcome, f"muffin/{MARKUP_NAME}").verdict == "usable"
    round_trip = from_jsonable(AuditOutcome, json.loads(dumps(outcome)))
    assert round_trip == outcome


def test_bad_files_get_their_reason_and_the_rest_stay_usable(tiny_dataset):
    (tiny_dataset / "chihuahua" / "empty.jpg").write_bytes(b"")
    make_image(tiny_dataset / "muffin" / "gray.png", mode="L", seed=5)
    outcome = audit(tiny_dataset)
    assert record(outcome, "chihuahua/empty.jpg").reason == "empty file (0 bytes)"
    assert record(outcome, "muffin/gray.png").verdict == "converted"
    assert [(c.usable, c.converted, c.rejected) for c in outcome.counts] == [(12, 0, 1), (13, 1, 0)]
    assert record(outcome, "muffin/gray.png").phash != ""
    assert record(outcome, "chihuahua/empty.jpg").phash == ""


# --- errors ------------------------------------------------------------------------------------


def test_missing_folder_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*does not exist.*one sub-folder per class"):
        audit(tmp_path / "nowhere")


def test_a_file_instead_of_a_folder_is_a_data_error(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"data\.zip.*not a folder"):
        audit(tmp_path / "data.zip")


def test_fewer_than_two_classes_is_a_data_error(tmp_path):
    make_image(tmp_path / "data" / "chihuahua" / "a.png")
    with pytest.raises(DataError, match=r"1 class folder\(s\) \(chihuahua/\); at least two"):
        audit(tmp_path / "data")


def test_an_empty_class_folder_is_a_data_error(tiny_dataset):
    (tiny_dataset / "bagel").mkdir()
    with pytest.raises(DataError, match=r"bagel.*holds no files"):
        audit(tiny_dataset)


def test_a_class_with_only_rejected_files_is_a_data_error(tiny_dataset):
    shutil.rmtree(tiny_dataset / "muffin")
    (tiny_dataset / "muffin").mkdir()
    (tiny_dataset / "muffin" / "x.jpg").write_text("text")
    with pytest.raises(DataError, match=r"muffin.*no usable image.*muffin/x\.jpg: not a JPEG"):
        audit(tiny_dataset)


# --- sampling, identity ------------------------------------------------------------------------


def test_max_per_class_takes_the_same_seeded_sample_every_time(tiny_dataset):
    first = audit(tiny_dataset, max_per_class=5, seed=3)
    again = audit(tiny_dataset, max_per_class=5, seed=3)
    other = audit(tiny_dataset, max_per_class=5, seed=4)
    assert [c.usable for c in first.counts] == [5, 5]
    assert [r.path for r in first.files] == [r.path for r in again.files]
    assert [r.path for r in first.files] != [r.path for r in other.files]
    assert first.max_per_class == 5


def test_digest_changes_when_a_usable_file_changes(tiny_dataset):
    before = audit(tiny_dataset).digest
    assert audit(tiny_dataset).digest == before
    make_image(tiny_dataset / "muffin" / "muffin_000.png", corner="bottom-right", seed=999)
    assert audit(tiny_dataset).digest != before


def test_listing_fingerprint_changes_when_a_file_is_added_or_touched(tiny_dataset):
    before = listing_fingerprint(tiny_dataset)
    assert listing_fingerprint(tiny_dataset) == before
    target = tiny_dataset / "muffin" / "muffin_003.png"
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = listing_fingerprint(tiny_dataset)
    assert touched != before
    make_image(tiny_dataset / "muffin" / "new.png")
    assert listing_fingerprint(tiny_dataset) != touched


# --- duplicates --------------------------------------------------------------------------------


def test_exact_copy_is_one_exact_group_not_repeated_as_near(tiny_dataset):
    shutil.copy(tiny_dataset / "chihuahua" / "chihuahua_001.png", tiny_dataset / "chihuahua" / "copy.png")
    groups = audit(tiny_dataset).duplicate_groups
    assert [(g.kind, g.files, g.cross_class) for g in groups] == [
        ("exact", ["chihuahua/chihuahua_001.png", "chihuahua/copy.png"], False)]


def test_reencoded_resized_copy_is_a_near_duplicate(tmp_path):
    data = tmp_path / "data"
    for i in range(4):
        photo(data / "chihuahua" / f"c{i}.png", seed=i)
        photo(data / "muffin" / f"m{i}.png", seed=100 + i)
    original = Image.open(data / "chihuahua" / "c1.png")
    original.resize((52, 52), Image.Resampling.LANCZOS).save(data / "chihuahua" / "c1-small.jpg",
                                                              quality=80)
    groups = audit(data).duplicate_groups
    assert [(g.kind, g.files) for g in groups] == [("near", ["chihuahua/c1-small.jpg", "chihuahua/c1.png"])]


def test_duplicate_across_classes_is_flagged_as_possible_label_noise(tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        photo(data / "chihuahua" / f"c{i}.png", seed=i)
        photo(data / "muffin" / f"m{i}.png", seed=100 + i)
    shutil.copy(data / "chihuahua" / "c2.png", data / "muffin" / "looks-like-a-muffin.png")
    outcome = audit(data)
    (group,) = outcome.duplicate_groups
    assert group.cross_class and group.labels == ["chihuahua", "muffin"]
    assert "CROSS-CLASS" in summary(outcome)


def test_near_group_larger_than_an_exact_group_is_reported_too(tmp_path):
    data = tmp_path / "data"
    for i in range(3):
        photo(data / "chihuahua" / f"c{i}.png", seed=i)
        photo(data / "muffin" / f"m{i}.png", seed=100 + i)
    shutil.copy(data / "muffin" / "m0.png", data / "muffin" / "m0-copy.png")
    Image.open(data / "muffin" / "m0.png").save(data / "muffin" / "m0.jpg", quality=85)
    kinds = [(g.kind, len(g.files)) for g in audit(data).duplicate_groups]
    assert kinds == [("exact", 2), ("near", 3)]


def test_perceptual_hash_is_close_for_a_resized_copy_and_far_for_another_picture(tmp_path):
    a = Image.open(photo(tmp_path / "a.png", seed=1, size=128)).convert("RGB")
    b = Image.open(photo(tmp_path / "b.png", seed=2, size=128)).convert("RGB")

    def bits(x: str, y: str) -> int:
        return bin(int(x, 16) ^ int(y, 16)).count("1")

    assert bits(perceptual_hash(a), perceptual_hash(a.resize((90, 70)))) <= 4
    assert bits(perceptual_hash(a), perceptual_hash(b)) > 16


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=60), st.integers(0, 64))
def test_close_pairs_finds_exactly_the_pairs_a_slow_loop_finds(values, max_distance):
    hashes = np.array(values, dtype=np.uint64)
    if len(hashes) == 0:
        return
    rows, cols = close_pairs(hashes, max_distance)
    found = set(zip(rows.tolist(), cols.tolist(), strict=True))
    expected = {(i, j) for i in range(len(values)) for j in range(i + 1, len(values))
                if bin(values[i] ^ values[j]).count("1") <= max_distance}
    assert found == expected


def test_thousands_of_hashes_are_compared_quickly():
    hashes = np.random.default_rng(0).integers(0, 2**63, 5000, dtype=np.uint64)
    started = time.monotonic()
    close_pairs(hashes, 4)
    assert time.monotonic() - started < 3.0


# --- summary -----------------------------------------------------------------------------------


def test_summary_lists_counts_rejections_conversions_and_skips(tiny_dataset):
    (tiny_dataset / "chihuahua" / "notes.jpg").write_text("hello")
    make_image(tiny_dataset / "muffin" / "gray.png", mode="L", seed=9)
    (tiny_dataset / "notes.txt").write_text("about")
    text = summary(audit(tiny_dataset))
    assert "chihuahua                      12          0         1" in text
    assert "chihuahua/notes.jpg: not a JPEG, PNG, BMP, GIF or WebP image" in text
    assert "muffin/gray.png: grayscale (L) → RGB" in text
    assert "file at top level ignored: notes.txt" in text
    assert "Duplicate groups: 0 exact" in text


# --- the real photos ---------------------------------------------------------------------------


def test_a_slice_of_the_real_photos_is_usable(shared_data):
    outcome = audit(shared_data, AuditConfig(), max_per_class=30, seed=1)
    assert outcome.classes == ["chihuahua", "muffin"]
    assert [c.usable for c in outcome.counts] == [30, 30]
    assert all(r.format == "JPEG" for r in outcome.files)
    assert outcome.wall_s < 20
