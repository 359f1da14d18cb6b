"""Where a study's images come from, and the name (key) each file goes by in every outcome.

Data comes in three shapes, and all become one listing of (key, class, fixed split, group):

- a folder with one sub-folder per class (the Keras convention), walked recursively: images in
  nested folders belong to the class folder they sit under;
- a labels CSV, `path,label[,split][,group]`, paths relative to the CSV's folder (docs/data.md);
- either of them, plus a given test folder (and validation folder) with the same class names.

Keys: a file of the data folder (or of the CSV's folder) is known by its path relative to that
folder, POSIX separators (`muffin/2024/img_1.jpg`); a file of the given test folder by
`test:` + its path relative to the test folder, of the given validation folder by `val:` + its
path. The prefixes keep two roots apart without assuming they share a parent, and `file_path` is
the one place that turns a key back into a file. A data-folder key that begins with a prefix
would be ambiguous, and is refused when given folders are used.

Walking: names that are not UTF-8 and hidden folders are skipped with the reason; a folder link
is followed, unless it leads back to a folder above it (a loop), which is skipped with the reason.
A file reached through two links appears twice, and the audit finds the copies as exact duplicates.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from chimuf.core.errors import DataError

LAYOUT_HINT = ("expected one sub-folder per class (images inside it, at any depth), e.g. "
               "DIR/chihuahua/*.jpg and DIR/muffin/*.jpg, or a labels CSV (docs/data.md)")
PREFIXES = {"test": "test:", "validation": "val:"}  # key prefix of a given folder's files, by split
SPLIT_NAMES = {"": "", "train": "train", "validation": "validation", "val": "validation", "test": "test"}
CSV_COLUMNS = ("path", "label", "split", "group")
SHOWN_ROWS = 3  # bad CSV rows named in the one-line error


@dataclass
class Listing:
    """What the data holds, before any file is read."""

    classes: list[str]  # sorted class names
    files: list[tuple[str, str]]  # (key, class), sorted by key
    skipped: list[str]  # entries not walked, each with its reason
    fixed: dict[str, str] = field(default_factory=dict)  # key → "train" | "validation" | "test"
    groups: dict[str, str] = field(default_factory=dict)  # key → the CSV's group of the file


@dataclass(frozen=True)
class Sources:
    """The data as the user gave it: a folder or a labels CSV, and the given test / validation folders."""

    data_dir: Path  # the data folder, or the labels CSV's folder
    labels_csv: Path | None = None
    test_dir: Path | None = None
    val_dir: Path | None = None

    def given(self) -> dict[str, Path]:
        """Split → given folder, for the splits given as folders."""
        return {split: folder for split, folder in (("test", self.test_dir), ("validation", self.val_dir))
                if folder is not None}


def file_path(data_dir: str | Path, given: dict[str, str], key: str) -> Path:
    """The file a key names: `test:` and `val:` keys under their given folder, others under `data_dir`."""
    for split, prefix in PREFIXES.items():
        if key.startswith(prefix) and given.get(split):
            return Path(given[split]) / key[len(prefix):]
    return Path(data_dir) / key


# --- the whole listing -------------------------------------------------------------------------


def list_sources(sources: Sources, max_per_class: int = 0, seed: int = 0) -> Listing:
    """The data folder (or CSV) and the given folders as one listing; each sampled to
    `max_per_class` per class when that is > 0."""
    main = list_csv(sources.labels_csv) if sources.labels_csv else list_folder(check_folder(sources.data_dir))
    check_listing(sources.labels_csv or sources.data_dir, main)
    sample(main, max_per_class, seed)
    given = sources.given()
    if given:
        check_no_prefixed_keys(main)
    if "test" in given and "test" in main.fixed.values():
        raise DataError(f"labels CSV `{sources.labels_csv}` puts files in the test split and a test folder "
                        f"`{given['test']}` is given too; use one of the two (drop the CSV's test rows "
                        "or the --test-dir)")
    for split, folder in given.items():
        extra = list_folder(check_folder(folder))
        check_same_classes(split, folder, extra.classes, main.classes)
        check_listing(folder, extra)
        sample(extra, max_per_class, seed)
        prefix = PREFIXES[split]
        main.files += [(prefix + key, label) for key, label in extra.files]
        main.fixed.update({prefix + key: split for key, _ in extra.files})
        main.skipped += [f"{split} folder: {note}" for note in extra.skipped]
    main.files.sort()
    return main


def check_folder(folder: Path) -> Path:
    path = Path(folder).expanduser()
    if not path.exists():
        raise DataError(f"data folder `{path}` does not exist; {LAYOUT_HINT}")
    if not path.is_dir():
        raise DataError(f"data folder `{path}` is a file, not a folder; {LAYOUT_HINT}")
    return path.resolve()


def check_listing(where: Path, listing: Listing) -> None:
    if len(listing.classes) < 2:
        found = ", ".join(f"{c}/" for c in listing.classes) or "none"
        kind = "class folder(s)" if Path(where).is_dir() else "class(es)"
        raise DataError(f"data `{where}` has {len(listing.classes)} {kind} ({found}); at least two are "
                        f"needed: {LAYOUT_HINT}")
    with_files = {label for _, label in listing.files}
    for label in listing.classes:
        if label not in with_files:
            raise DataError(f"class folder `{Path(where) / label}` holds no files; put its images there or "
                            f"remove the folder ({LAYOUT_HINT})")


def check_same_classes(split: str, folder: Path, found: list[str], expected: list[str]) -> None:
    if sorted(found) != sorted(expected):
        raise DataError(f"the given {split} folder `{folder}` has classes {', '.join(found) or 'none'}; the "
                        f"training data has {', '.join(expected)}: name its class folders alike")


def check_no_prefixed_keys(listing: Listing) -> None:
    for key, _ in listing.files:
        if key.startswith(tuple(PREFIXES.values())):
            raise DataError(f"file `{key}` of the data begins with a given folder's prefix "
                            f"({', '.join(PREFIXES.values())}), so its name would be ambiguous; rename "
                            "its class folder")


def order_classes(classes: list[str], positive: str) -> list[str]:
    """The classes, sorted, with `positive` (when named) last: the sigmoid gives P(classes[-1])."""
    if not positive:
        return sorted(classes)
    if positive not in classes:
        raise DataError(f"data.positive = {positive!r} is not one of the classes "
                        f"({', '.join(sorted(classes))}); name one of them, or leave it empty for the "
                        "second in name order")
    return [*sorted(c for c in classes if c != positive), positive]


def sample(listing: Listing, max_per_class: int, seed: int) -> None:
    """At most `max_per_class` files per class, drawn with `seed` from the key-sorted list.

    Hidden files are always kept (they are rejected unread, and the audit should show them).
    """
    if max_per_class <= 0:
        return
    kept: list[tuple[str, str]] = []
    for label in sorted({label for _, label in listing.files}):
        names = sorted(key for key, lab in listing.files if lab == label)
        hidden = [key for key in names if key.rsplit("/", 1)[-1].startswith(".")]
        visible = [key for key in names if not key.rsplit("/", 1)[-1].startswith(".")]
        if len(visible) > max_per_class:
            visible = random.Random(f"{seed}:{label}").sample(visible, max_per_class)
        kept += [(key, label) for key in hidden + visible]
    listing.files = sorted(kept)


# --- a folder of class folders ------------------------------------------------------------------


def list_folder(root: Path) -> Listing:
    """Class folders and every file under them (at any depth); anything else goes to `skipped`."""
    classes: list[str] = []
    files: list[tuple[str, str]] = []
    skipped: list[str] = []
    for top in sorted(root.iterdir(), key=lambda p: p.name):
        if not utf8_name(top.name):
            skipped.append(f"name not valid UTF-8, ignored: {top.name!a}")
        elif not top.is_dir():
            skipped.append(f"file at top level ignored: {top.name} (images belong in a class folder)")
        elif top.name.startswith("."):
            skipped.append(f"hidden folder {top.name}/ not walked")
        else:
            classes.append(top.name)
            for key, kind, note in walk(top, top.name, frozenset({identity(top)})):
                if kind == "file":
                    files.append((key, top.name))
                elif kind == "skip":
                    skipped.append(note)
    return Listing(classes, sorted(files), skipped)


def walk(folder: Path, rel: str, above: frozenset[tuple[int, int]]) -> Iterator[tuple[str, str, str]]:
    """(key, "file" | "dir" | "skip", why skipped) for every entry under `folder`, depth first in
    name order. `above` holds the folders on the way down (device, inode), so a link back up is a loop."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        yield rel, "skip", f"folder {rel}/ cannot be listed ({exc.strerror or exc})"
        return
    for entry in entries:
        key = f"{rel}/{entry.name}"
        if not utf8_name(entry.name):
            yield key, "skip", f"name not valid UTF-8, ignored: {key!a}"
        elif not is_folder(entry):
            yield key, "file", ""
        elif entry.name.startswith("."):
            yield key, "skip", f"hidden folder {key}/ not walked"
        elif identity(Path(entry.path)) in above:
            yield key, "skip", f"folder {key}/ not walked: it leads back to a folder above it (a loop)"
        else:
            yield key, "dir", ""
            yield from walk(Path(entry.path), key, above | {identity(Path(entry.path))})


def expand_folders(paths: list[Path]) -> list[Path]:
    """`paths` with each folder replaced by every file under it (walked as class folders are, in
    name order); files stay as given, so a missing one is still reported by name."""
    expanded: list[Path] = []
    for path in paths:
        if Path(path).is_dir():
            root = Path(path)
            expanded += [root / key for key, kind, _ in walk(root, ".", frozenset({identity(root)}))
                         if kind == "file"]
        else:
            expanded.append(Path(path))
    return expanded


def is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links, as the top level does
    except OSError:
        return False


def identity(folder: Path) -> tuple[int, int]:
    info = folder.stat()
    return info.st_dev, info.st_ino


def utf8_name(name: str) -> bool:
    """False for names with bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- a labels CSV -------------------------------------------------------------------------------


def list_csv(csv_path: Path) -> Listing:
    """The files a labels CSV names, with their classes and, where given, fixed splits and groups.

    Every bad row is an error naming its line: nothing is dropped quietly. Missing files are not
    checked here: the audit rejects each with "file not found".
    """
    path = Path(csv_path).expanduser()
    rows, bad = read_rows(path)
    bad += check_groups(rows)
    if bad:
        shown = "; ".join(f"line {line}: {why}" for line, why in bad[:SHOWN_ROWS])
        more = f" (and {len(bad) - SHOWN_ROWS} more)" if len(bad) > SHOWN_ROWS else ""
        raise DataError(f"labels CSV `{path}` has {len(bad)} bad row(s): {shown}{more}; fix them (columns "
                        "path,label[,split][,group], paths relative to the CSV's folder; docs/data.md)")
    if not rows:
        raise DataError(f"labels CSV `{path}` names no file; add rows `path,label` under its header")
    splits = group_splits(rows)
    files = sorted((row.key, row.label) for row in rows)
    fixed = {row.key: row.split or splits.get(row.group, "") for row in rows}
    return Listing(sorted({row.label for row in rows}), files, [],
                   {key: split for key, split in fixed.items() if split},
                   {row.key: row.group for row in rows if row.group})


@dataclass(frozen=True)
class Row:
    line: int
    key: str
    label: str
    split: str
    group: str


def read_rows(path: Path) -> tuple[list[Row], list[tuple[int, str]]]:
    """The CSV's good rows, and (line, what is wrong) for each bad one."""
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise DataError(f"labels CSV `{path}` does not exist; pass an existing file (--labels FILE)"
                        ) from None
    except OSError as exc:
        raise DataError(f"labels CSV `{path}` cannot be read ({exc.strerror or exc})") from None
    rows: list[Row] = []
    bad: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    with handle:
        try:
            reader = csv.DictReader(handle)
            check_header(path, reader.fieldnames)
            for record in reader:
                line = reader.line_num
                row, why = parse_row(line, record)
                if row is not None and row.key in seen:
                    row, why = None, f"`{row.key}` is listed already on line {seen[row.key]}"
                if row is None:
                    bad.append((line, why))
                else:
                    seen[row.key] = line
                    rows.append(row)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"labels CSV `{path}` cannot be parsed ({exc}); save it as UTF-8 CSV") from None
    return rows, bad


def check_header(path: Path, names: list[str] | None) -> None:
    found = [name.strip() for name in names or []]
    unknown = [name for name in found if name not in CSV_COLUMNS]
    if "path" not in found or "label" not in found or unknown:
        raise DataError(f"labels CSV `{path}` has the header {','.join(found) or '(none)'}; expected "
                        "the columns path,label and optionally split,group (docs/data.md)")


def parse_row(line: int, record: dict) -> tuple[Row | None, str]:
    if record.get(None):
        return None, f"{len(record[None])} more field(s) than the header has"
    values = {name.strip(): (value or "").strip() for name, value in record.items() if name is not None}
    raw, label = values.get("path", ""), values.get("label", "")
    split = values.get("split", "").lower()
    if not raw:
        return None, "empty path"
    if not label:
        return None, f"`{raw}` has no label"
    key, why = csv_key(raw)
    if not key:
        return None, why
    if split not in SPLIT_NAMES:
        return None, f"split {values['split']!r} is not train, validation (or val) or test"
    return Row(line, key, label, SPLIT_NAMES[split], values.get("group", "")), ""


def csv_key(raw: str) -> tuple[str, str]:
    """The key of a path as the CSV writes it, or ("", why) when it leaves the CSV's folder."""
    posix = PurePosixPath(raw.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts:
        return "", f"path `{raw}` must be relative to the CSV's folder and stay inside it"
    return posix.as_posix(), ""


def check_groups(rows: list[Row]) -> list[tuple[int, str]]:
    """A group lies in one split: rows of one group fixing two different splits are bad."""
    first: dict[str, Row] = {}
    bad = []
    for row in rows:
        if row.group and row.split:
            other = first.setdefault(row.group, row)
            if other.split != row.split:
                bad.append((row.line, f"group `{row.group}` is put in {row.split} here and in {other.split} "
                                      f"on line {other.line}; a group lies inside one split"))
    return bad


def group_splits(rows: list[Row]) -> dict[str, str]:
    """Group → the split some of its rows fix (the other rows of the group follow it)."""
    return {row.group: row.split for row in rows if row.group and row.split}
