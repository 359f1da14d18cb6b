"""split: stratified, disjoint, covering, deterministic, duplicate groups whole; and the folds."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimuf.core.config import SplitConfig
from chimuf.core.errors import DataError
from chimuf.core.results import AuditOutcome, DuplicateGroup, FileRecord, dumps
from chimuf.data.split import fold_assignments, split_dataset

CFG = SplitConfig()  # test 0.2, validation 0.125 of the rest
CLASSES = ["chihuahua", "muffin"]


def fake_audit(per_class: dict[str, int], groups: list[list[str]] = (), rejected: int = 0,
               classes: list[str] = CLASSES) -> AuditOutcome:
    """An audit outcome without images: files `<class>/<i>.jpg`, all usable unless said."""
    files = []
    for label, n in per_class.items():
        files += [FileRecord(f"{label}/{i:04d}.jpg", label, "usable", "", 1000, f"{label}{i}")
                  for i in range(n)]
        files += [FileRecord(f"{label}/bad{i}.jpg", label, "rejected", "empty file (0 bytes)", 0)
                  for i in range(rejected)]
    label_of = {f.path: f.label for f in files}
    dup = [DuplicateGroup("near", sorted(g), [label_of[p] for p in sorted(g)],
                          len({label_of[p] for p in g}) > 1) for g in groups]
    return AuditOutcome("/data", classes, files, [], dup, [], "d" * 64)


def split_of(outcome) -> dict[str, str]:
    return {p: name for name in ("train", "validation", "test") for p in getattr(outcome, name)}


def test_paper_proportions_per_class_within_one_image():
    outcome = split_dataset(fake_audit({"chihuahua": 2559, "muffin": 2174}), CFG, seed=42)
    for count, total in zip(outcome.counts, (2559, 2174), strict=True):
        assert abs(count.test - 0.2 * total) <= 1
        assert abs(count.validation - 0.1 * total) <= 1
        assert count.train + count.validation + count.test == total
    assert (len(outcome.train), len(outcome.validation), len(outcome.test)) == (3313, 473, 947)


def test_lists_are_disjoint_in_content_order_and_cover_exactly_the_usable_files():
    """Each list is in content order (SHA-256, then path): the trainings see the same photos in the
    same order whatever the files are called or however they are foldered."""
    audit = fake_audit({"chihuahua": 40, "muffin": 31}, rejected=2)
    outcome = split_dataset(audit, CFG, seed=1)
    everything = outcome.train + outcome.validation + outcome.test
    assert len(everything) == len(set(everything)) == 71
    assert set(everything) == {r.path for r in audit.files if r.verdict == "usable"}
    content = {r.path: (r.sha256, r.path) for r in audit.files}
    for name in ("train", "validation", "test"):
        assert getattr(outcome, name) == sorted(getattr(outcome, name), key=content.__getitem__)


def test_same_audit_and_seed_give_byte_identical_lists_and_another_seed_does_not():
    audit = fake_audit({"chihuahua": 60, "muffin": 50}, groups=[["muffin/0001.jpg", "muffin/0002.jpg"]])
    first, again = split_dataset(audit, CFG, seed=7), split_dataset(audit, CFG, seed=7)
    assert dumps(first) == dumps(again)
    other = split_dataset(audit, CFG, seed=8)
    assert other.test != first.test and other.digest != first.digest


def test_other_fractions_are_met_too():
    outcome = split_dataset(fake_audit({"chihuahua": 300, "muffin": 300}),
                            SplitConfig(test_fraction=0.3, validation_fraction=0.25), seed=0)
    for count in outcome.counts:  # per class: test 0.3 × 300 = 90, validation 0.7 × 0.25 × 300 = 52.5
        assert abs(count.test - 90) <= 1 and abs(count.validation - 52.5) <= 1


@settings(max_examples=30, deadline=None)
@given(st.integers(20, 80), st.integers(20, 80), st.data())
def test_duplicate_groups_never_straddle_two_splits(n_chihuahua, n_muffin, data):
    paths = [f"chihuahua/{i:04d}.jpg" for i in range(n_chihuahua)]
    paths += [f"muffin/{i:04d}.jpg" for i in range(n_muffin)]
    groups = data.draw(st.lists(st.lists(st.sampled_from(paths), min_size=2, max_size=4, unique=True),
                                max_size=6))
    outcome = split_dataset(fake_audit({"chihuahua": n_chihuahua, "muffin": n_muffin}, groups), CFG,
                            seed=data.draw(st.integers(0, 1000)))
    where = split_of(outcome)
    for group in groups:  # overlapping groups are merged, so each original group is whole
        assert len({where[p] for p in group}) == 1
    for group in outcome.groups:
        assert len({where[p] for p in group}) == 1


def test_overlapping_groups_are_merged_into_one_unit():
    groups = [["muffin/0001.jpg", "muffin/0002.jpg"], ["muffin/0002.jpg", "chihuahua/0003.jpg"]]
    outcome = split_dataset(fake_audit({"chihuahua": 30, "muffin": 30}, groups), CFG, seed=3)
    assert outcome.groups == [["chihuahua/0003.jpg", "muffin/0001.jpg", "muffin/0002.jpg"]]


def test_a_class_too_small_for_three_splits_is_a_data_error():
    with pytest.raises(DataError, match=r"`muffin` has 6 usable image\(s\).*at least 10 per class"):
        split_dataset(fake_audit({"chihuahua": 50, "muffin": 6}), CFG, seed=0)


def test_the_smallest_allowed_class_gets_one_image_in_every_split():
    outcome = split_dataset(fake_audit({"chihuahua": 10, "muffin": 10}), CFG, seed=5)
    assert all(min(c.train, c.validation, c.test) >= 1 for c in outcome.counts)


def test_a_group_too_large_to_spread_is_a_data_error():
    groups = [[f"muffin/{i:04d}.jpg" for i in range(10)]]
    with pytest.raises(DataError, match=r"split got no image of class `muffin`.*duplicate groups"):
        split_dataset(fake_audit({"chihuahua": 30, "muffin": 10}, groups), CFG, seed=0)


def test_more_than_two_classes_is_a_data_error():
    audit = fake_audit({"a": 20, "b": 20, "c": 20}, classes=["a", "b", "c"])
    with pytest.raises(DataError, match=r"binary classification.*3 classes \(a, b, c\)"):
        split_dataset(audit, CFG, seed=0)


# --- folds -------------------------------------------------------------------------------------


def fold_inputs(n0: int = 53, n1: int = 41):
    paths = [f"a/{i:03d}.jpg" for i in range(n0)] + [f"b/{i:03d}.jpg" for i in range(n1)]
    labels = [0] * n0 + [1] * n1
    return paths, labels


def test_folds_are_stratified_and_every_path_gets_one():
    paths, labels = fold_inputs()
    folds = fold_assignments(paths, labels, [], 5, seed=1)
    assert len(folds) == len(paths) and set(folds) == set(range(5))
    per = Counter(zip(folds, labels, strict=True))
    for label, total in ((0, 53), (1, 41)):
        sizes = [per[(f, label)] for f in range(5)]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == total


def test_folds_are_deterministic_and_independent_of_path_order():
    paths, labels = fold_inputs()
    groups = [["a/001.jpg", "b/004.jpg", "test/x.jpg"]]
    first = fold_assignments(paths, labels, groups, 4, seed=9)
    assert fold_assignments(paths, labels, groups, 4, seed=9) == first
    reversed_folds = fold_assignments(paths[::-1], labels[::-1], groups, 4, seed=9)
    assert reversed_folds[::-1] == first


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.data())
def test_folds_keep_groups_whole(folds, data):
    paths, labels = fold_inputs(30, 25)
    groups = data.draw(st.lists(st.lists(st.sampled_from(paths), min_size=2, max_size=3, unique=True),
                                max_size=5))
    assigned = dict(zip(paths, fold_assignments(paths, labels, groups, folds, seed=0), strict=True))
    for group in groups:
        assert len({assigned[p] for p in group}) == 1


def test_too_few_images_for_the_folds_is_a_data_error():
    paths, labels = fold_inputs(10, 3)
    with pytest.raises(DataError, match=r"class 1 has 3 image\(s\).*5-fold.*at least 5"):
        fold_assignments(paths, labels, [], 5, seed=0)


def test_given_test_and_validation_files_stay_put_and_the_rest_all_trains():
    audit = fake_audit({"chihuahua": 30, "muffin": 30})
    for i, record in enumerate(audit.files):
        record.split = ("test", "validation", "", "", "", "")[i % 6]
    outcome = split_dataset(audit, CFG, seed=3)
    fixed = {r.path: r.split for r in audit.files if r.split}
    assert {p: n for p, n in split_of(outcome).items() if p in fixed} == fixed
    assert sorted(outcome.train) == sorted(r.path for r in audit.files if not r.split)
    assert outcome.given == ["test", "validation"]


def test_the_split_follows_the_pictures_not_their_names():
    audit = fake_audit({"chihuahua": 40, "muffin": 40})
    renamed = fake_audit({"chihuahua": 40, "muffin": 40})
    for record in renamed.files:
        record.path = f"{record.label}/z/{999 - int(record.path[-8:-4])}.jpg"  # other names, reversed order
    sha = {r.path: r.sha256 for r in audit.files}
    sha_renamed = {r.path: r.sha256 for r in renamed.files}
    a, b = split_dataset(audit, CFG, seed=5), split_dataset(renamed, CFG, seed=5)
    assert {sha[p]: n for p, n in split_of(a).items()} == {sha_renamed[p]: n for p, n in split_of(b).items()}
