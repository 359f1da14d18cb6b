"""Data as it comes: a given test folder, a labels CSV, nested folders, the positive class.

Real photos (a few copied from ../shared/data into tmp_path) where they serve; images the test
makes itself when that folder is absent.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from chimuf.core.config import AuditConfig, SplitConfig
from chimuf.core.console import Console
from chimuf.core.errors import DataError
from chimuf.core.results import AuditOutcome
from chimuf.data.audit import audit_folder, audit_sources
from chimuf.data.cache import build_cache, load_images
from chimuf.data.imagefile import load_rgb, model_array
from chimuf.data.sources import Sources, expand_folders
from chimuf.data.split import split_dataset
from tests.conftest import SHARED_DATA, make_dataset, make_image

CFG = AuditConfig(min_side=16)
CLASSES = ("chihuahua", "muffin")


def quiet() -> Console:
    return Console(stream=io.StringIO(), live=False)


def photos(tmp_path: Path, per_class: int) -> dict[str, list[Path]]:
    """`per_class` photos of each class: the first real ones by name, else made here."""
    if SHARED_DATA.is_dir():
        return {label: sorted((SHARED_DATA / label).iterdir())[:per_class] for label in CLASSES}
    made = make_dataset(tmp_path / "made", per_class=per_class)
    return {label: sorted((made / label).iterdir()) for label in CLASSES}


def lay_out(found: dict[str, list[Path]], root: Path, nest: bool = False) -> Path:
    """root/<class>/<name>, or root/<class>/part<i % 3>/<name> when `nest`."""
    for label, files in found.items():
        for i, source in enumerate(files):
            target = root / label / (f"part{i % 3}" if nest else "") / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return root


@pytest.fixture
def given(tmp_path: Path) -> tuple[Path, Path]:
    """A training folder of 10 photos per class and a given test folder of 4 others per class."""
    found = photos(tmp_path, 14)
    train = lay_out({label: files[:10] for label, files in found.items()}, tmp_path / "train")
    test = lay_out({label: files[10:] for label, files in found.items()}, tmp_path / "test")
    return train, test


def audit_given(train: Path, test: Path, **kwargs) -> AuditOutcome:
    return audit_sources(Sources(train, test_dir=test), CFG, quiet(), **kwargs)


def by_content(audit: AuditOutcome, split) -> dict[str, str]:
    """SHA-256 of each split file → its split: what a split is, whatever the files are called."""
    sha = {r.path: r.sha256 for r in audit.files}
    return {sha[p]: name for name in ("train", "validation", "test") for p in getattr(split, name)}


# --- a given test folder -----------------------------------------------------------------------


def test_a_given_test_folder_is_the_test_split_exactly_and_only_the_rest_is_split(given):
    train, test = given
    audit = audit_given(train, test)
    split = split_dataset(audit, SplitConfig(), seed=42)
    expected = sorted(f"test:{p.relative_to(test).as_posix()}" for p in test.rglob("*") if p.is_file())
    assert sorted(split.test) == expected and len(expected) == 8
    assert split.given == ["test"]
    assert len(split.train) + len(split.validation) == 20  # every training image, none held out for test
    assert [c.validation for c in split.counts] == [1, 1]  # 12.5 % of the rest, per class


def test_the_cache_decodes_the_given_test_folders_files(given, tmp_path):
    train, test = given
    audit = audit_given(train, test)
    images = load_images(build_cache(audit, train, 32, tmp_path / "cache", quiet()))
    key = next(p for p in images.paths if p.startswith("test:"))
    expected = model_array(load_rgb(test / key.removeprefix("test:"), CFG), 32)
    assert np.array_equal(images.images[images.rows([key])[0]], expected)


def test_near_duplicates_of_test_images_are_listed_and_dropped_from_training_when_asked(given):
    train, test = given
    source = sorted((test / "muffin").iterdir())[0]
    with Image.open(source) as image:  # a re-encoded, resized copy in the training data
        image.convert("RGB").resize((image.width * 3 // 4, image.height * 3 // 4)).save(
            train / "muffin" / "copy.jpg", quality=85)
    audit = audit_given(train, test)
    leaks = [g for g in audit.test_duplicates if "muffin/copy.jpg" in g.files]
    assert leaks and f"test:muffin/{source.name}" in leaks[0].files

    kept = split_dataset(audit, SplitConfig(), seed=42)
    assert "muffin/copy.jpg" in kept.train + kept.validation and kept.dropped == []
    dropped = split_dataset(audit, SplitConfig(), seed=42, drop_test_duplicates=True)
    assert "muffin/copy.jpg" in dropped.dropped
    assert "muffin/copy.jpg" not in dropped.train + dropped.validation + dropped.test
    assert dropped.test == kept.test


def test_a_given_test_folder_with_other_class_names_is_one_line_error(given):
    train, test = given
    (test / "muffin").rename(test / "muffins")
    with pytest.raises(DataError, match=r"given test folder .* has classes chihuahua, muffins; the "
                                        r"training data has chihuahua, muffin") as error:
        audit_given(train, test)
    assert "\n" not in str(error.value)


# --- a labels CSV ------------------------------------------------------------------------------


def write_csv(folder: Path, lines: list[str]) -> Path:
    path = folder / "labels.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def csv_audit(csv_path: Path) -> AuditOutcome:
    return audit_sources(Sources(csv_path.parent, labels_csv=csv_path), CFG, quiet())


def test_a_csv_split_column_fixes_splits_and_a_group_stays_inside_one_split(tmp_path):
    found = photos(tmp_path, 12)
    images = tmp_path / "images"
    images.mkdir()
    lines = ["path,label,split,group"]
    for label, files in found.items():
        for i, source in enumerate(files):
            shutil.copyfile(source, images / f"{label}-{source.name}")
            split = "test" if i < 3 else ""
            group = f"{label}-site{i % 4}" if i >= 3 else ""
            lines.append(f"images/{label}-{source.name},{label},{split},{group}")
    audit = csv_audit(write_csv(tmp_path, lines))
    assert audit.labels_csv == str((tmp_path / "labels.csv").resolve())
    split = split_dataset(audit, SplitConfig(), seed=7)
    assert sorted(split.test) == sorted(line.split(",")[0] for line in lines[1:] if ",test," in line)
    name_of = split.split_names()
    for group in {r.group for r in audit.files if r.group}:
        assert len({name_of[r.path] for r in audit.files if r.group == group}) == 1, group


def test_bad_csv_rows_are_named_by_line_in_one_line(tmp_path):
    make_image(tmp_path / "a.png")
    csv_path = write_csv(tmp_path, ["path,label,split", "a.png,chihuahua,", "b.png,,", "../c.png,muffin,",
                                    "a.png,muffin,", "d.png,muffin,later"])
    with pytest.raises(DataError) as error:
        csv_audit(csv_path)
    message = str(error.value)
    assert "4 bad row(s): line 3: `b.png` has no label; line 4: path `../c.png` must be relative" in message
    assert "line 5: `a.png` is listed already on line 2" in message and "(and 1 more)" in message
    assert "\n" not in message


def test_a_csv_group_put_in_two_splits_is_an_error_naming_both_lines(tmp_path):
    csv_path = write_csv(tmp_path, ["path,label,split,group", "a.png,x,train,g1", "b.png,y,test,g1"])
    with pytest.raises(DataError, match=r"line 3: group `g1` is put in test here and in train on line 2"):
        csv_audit(csv_path)


def test_a_csv_with_an_unknown_column_says_which_columns_it_takes(tmp_path):
    csv_path = write_csv(tmp_path, ["file,class", "a.png,x"])
    with pytest.raises(DataError, match=r"header file,class; expected the columns path,label"):
        csv_audit(csv_path)


def test_a_file_the_csv_names_but_that_is_missing_is_rejected_by_name(tmp_path):
    for i in range(2):
        make_image(tmp_path / f"x{i}.png", seed=i)
        make_image(tmp_path / f"y{i}.png", seed=10 + i)
    lines = ["path,label", "x0.png,x", "x1.png,x", "y0.png,y", "y1.png,y", "gone.png,y"]
    audit = csv_audit(write_csv(tmp_path, lines))
    gone = next(r for r in audit.files if r.path == "gone.png")
    assert (gone.verdict, gone.reason) == ("rejected", "file not found")


# --- the same photos in three layouts ------------------------------------------------------------


def three_layouts(tmp_path: Path, per_class: int) -> dict[str, Sources]:
    found = photos(tmp_path, per_class)
    flat = lay_out(found, tmp_path / "flat")
    nested = lay_out(found, tmp_path / "nested", nest=True)
    table = tmp_path / "table"
    lines = ["path,label"]
    for label, files in found.items():
        for source in files:
            target = table / "all" / f"{label[0]}_{source.name}"  # other names, another order
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            lines.append(f"all/{target.name},{label}")
    return {"folders": Sources(flat), "nested": Sources(nested),
            "csv": Sources(table, labels_csv=write_csv(table, lines))}


def test_the_same_photos_as_folders_nested_folders_and_a_csv_split_alike(tmp_path):
    splits = {}
    for name, sources in three_layouts(tmp_path, 16).items():
        audit = audit_sources(sources, CFG, quiet())
        splits[name] = by_content(audit, split_dataset(audit, SplitConfig(), seed=42))
    assert splits["folders"] == splits["nested"] == splits["csv"]
    assert set(splits["folders"].values()) == {"train", "validation", "test"}


def test_the_same_photos_in_three_layouts_are_listed_and_folded_in_the_same_order(tmp_path):
    """The split's lists and the k-fold's folds run in content order, so every training sees the same
    photos in the same order, whatever the layout: the same numbers follow (see the slow test)."""
    from chimuf.stages.kfold import make_folds

    orders = {}
    for name, sources in three_layouts(tmp_path, 16).items():
        audit = audit_sources(sources, CFG, quiet())
        split = split_dataset(audit, SplitConfig(), seed=42)
        sha = {r.path: r.sha256 for r in audit.files}
        lists = [[sha[p] for p in getattr(split, part)] for part in ("train", "validation", "test")]
        folds = [[sha[p] for p in fold] for fold in make_folds(split, audit, 3, seed=42)]
        orders[name] = (lists, folds)
    assert orders["folders"] == orders["nested"] == orders["csv"]


@pytest.mark.slow
def test_the_same_photos_in_three_layouts_train_to_the_same_numbers(tmp_path):
    """A tiny training of each layout's split, through the study's fit loop: identical losses."""
    from chimuf.core.config import TrainConfig
    from chimuf.ml.architectures.models import seeded_model
    from chimuf.ml.training.fit import Stopping, fit

    histories = {}
    for name, sources in three_layouts(tmp_path, 16).items():
        audit = audit_sources(sources, CFG, quiet())
        split = split_dataset(audit, SplitConfig(), seed=42)
        images = load_images(build_cache(audit, sources.data_dir, 32, tmp_path / f"cache-{name}", quiet()))
        train, validation = images.rows(split.train), images.rows(split.validation)
        model = seeded_model("model1", 32, None, "float32", 1e-3, seed=42)
        result = fit(model, (images.images[train], images.labels[train]),
                     (images.images[validation], images.labels[validation]),
                     TrainConfig(epochs=2, batch_size=8), None, 42, tmp_path / f"work-{name}", quiet(), name,
                     stopping=Stopping.fixed())
        histories[name] = [(e.loss, e.accuracy, e.val_loss, e.val_accuracy) for e in result.history]
    assert histories["folders"] == histories["nested"] == histories["csv"]


@pytest.mark.slow
def test_three_layouts_give_the_same_split_and_the_same_pixels_per_photo(tmp_path):
    """The heavy one: 60 photos per class, each layout audited, split and cached."""
    seen = {}
    for name, sources in three_layouts(tmp_path, 60).items():
        audit = audit_sources(sources, CFG, quiet())
        split = split_dataset(audit, SplitConfig(), seed=42)
        images = load_images(build_cache(audit, sources.data_dir, 32, tmp_path / f"cache-{name}", quiet()))
        sha = {r.path: r.sha256 for r in audit.files}
        pixels = {sha[p]: images.images[i].tobytes() for i, p in enumerate(images.paths)}
        seen[name] = (by_content(audit, split), pixels)
    assert seen["folders"] == seen["nested"] == seen["csv"]


# --- the positive class, two classes, folders for predict ------------------------------------------


def test_data_positive_puts_that_class_second_and_changes_the_datas_identity(tiny_dataset):
    plain = audit_folder(tiny_dataset, CFG, quiet())
    chosen = audit_folder(tiny_dataset, CFG, quiet(), positive="chihuahua")
    assert plain.classes == ["chihuahua", "muffin"] and chosen.classes == ["muffin", "chihuahua"]
    assert chosen.positive == "chihuahua" and chosen.digest != plain.digest
    assert split_dataset(chosen, SplitConfig(), seed=1).classes == ["muffin", "chihuahua"]
    with pytest.raises(DataError, match=r"data.positive = 'poodle' is not one of the classes"):
        audit_folder(tiny_dataset, CFG, quiet(), positive="poodle")


def test_a_study_refuses_three_classes_at_the_audit_in_one_line(tiny_dataset):
    from chimuf.stages.specs import Inputs, Setting, run_audit

    make_image(tiny_dataset / "bagel" / "b.png")
    setting = Setting(tiny_dataset, tiny_dataset / "cache", None)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"has 3 classes \(bagel, chihuahua, muffin\); keep exactly two"):
        run_audit(SimpleNamespace(console=quiet()), setting,  # type: ignore[arg-type]
                  Inputs(audit=CFG, max_per_class=0, positive=""))


def test_folders_given_to_predict_become_every_file_under_them(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    make_image(tmp_path / "in" / "deep" / "b.png")
    alone = make_image(tmp_path / "c.png")
    assert expand_folders([tmp_path / "in", alone, tmp_path / "missing.png"]) == [
        tmp_path / "in" / "a.png", tmp_path / "in" / "deep" / "b.png", alone, tmp_path / "missing.png"]


@pytest.mark.slow
def test_a_study_with_a_given_test_folder_tests_on_exactly_its_images(given, tmp_path, monkeypatch):
    """Through the command line: flags → config → folders → audit → split (the cache of such an
    audit: test_the_cache_decodes_the_given_test_folders_files)."""
    import json

    from chimuf.cli import main

    train, test = given
    monkeypatch.setenv("CHIMUF_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["study", "--profile", "smoke", "--data", str(train), "--test-dir", str(test),
                 "--out", str(run), "--stop-after", "split", "--project", "none"]) == 0
    results = json.loads((run / "results.json").read_text())
    on_disk = sorted(f"test:{p.relative_to(test).as_posix()}" for p in test.rglob("*") if p.is_file())
    assert sorted(results["split"]["test"]) == on_disk and results["split"]["given"] == ["test"]
    assert results["audit"]["test_dir"] == str(test.resolve())
