"""The audit: every file of the data folder, with a verdict and a reason, before anything trains.

A data folder follows the Keras convention: one sub-folder per class, images inside it at any
depth; or a labels CSV names the files; a given test (and validation) folder may come with either
(chimuf.data.sources lists them all, and names each file by its key).

    data/
        chihuahua/img_0_0.jpg ...
        muffin/2024/img_0_1.jpg ...

Each file is opened once (chimuf.data.imagefile: format by content, size limits, full decode, mode
conversion) and gets a SHA-256 and a 64-bit perceptual hash. Files with the same SHA-256 are
exact duplicates; files whose hashes differ in at most `near_duplicate_distance` bits are near
duplicates (a re-encoded or resized copy). A group spanning two classes is flagged: the same
picture cannot be both a chihuahua and a muffin, so one label is probably wrong. The split keeps
every group inside one split, so a copy of a test image never trains the model. A given test
set cannot move, so the groups linking it to the rest are listed apart (`test_duplicates`): the
split can drop their training side (`data.drop_test_duplicates`).

Files are read one after another: on the 4 733 Chihuahua/Muffin photos the audit takes about
3.5 s on this project's 2-core machine, and a pool of two processes measured 3.1 s (fork) and
3.7 s (spawn), not worth its cost. Expect there 4 733 usable files (3 grayscale JPEGs converted),
no exact duplicates and about 260 near-duplicate groups at the default 4-bit threshold.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from chimuf.core.console import printable
from chimuf.core.errors import DataError
from chimuf.core.results import AuditOutcome, ClassCount, DuplicateGroup, FileRecord
from chimuf.data.imagefile import read_image
from chimuf.data.sources import (
    Listing,
    Sources,
    check_folder,
    file_path,
    identity,
    list_sources,
    order_classes,
    walk,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    from PIL import Image

    from chimuf.core.config import AuditConfig
    from chimuf.core.console import Console

HASH_SIDE = 32  # pHash: the image is shrunk to 32×32 gray, then the 8×8 lowest DCT frequencies kept
HASH_BITS_SIDE = 8
PAIR_CHUNK = 1 << 20  # candidate pairs checked at once by the near-duplicate search (~50 MB)
EDGE_BUDGET = 1 << 22  # close pairs gathered before they are folded into the components


def audit_folder(data_dir: Path, cfg: AuditConfig, console: Console, *, max_per_class: int = 0,
                 seed: int = 0, positive: str = "") -> AuditOutcome:
    """Audit every file of `data_dir` (or a seeded sample of `max_per_class` per class)."""
    return audit_sources(Sources(Path(data_dir)), cfg, console, max_per_class=max_per_class, seed=seed,
                         positive=positive)


def audit_sources(sources: Sources, cfg: AuditConfig, console: Console, *, max_per_class: int = 0,
                  seed: int = 0, positive: str = "") -> AuditOutcome:
    """Audit the data folder or labels CSV of `sources` and its given folders (chimuf.data.sources);
    `positive` names the class whose probability the model gives (last in `classes`)."""
    started = time.monotonic()
    root = check_data_dir(sources.data_dir)

    # 1. List the files, their classes and any split the user fixed; nothing is read yet.
    listing = list_sources(replace(sources, data_dir=root), max_per_class, seed)
    classes = order_classes(listing.classes, positive)
    given = {split: str(check_data_dir(folder)) for split, folder in sources.given().items()}

    # 2. Open each file once: verdict, SHA-256, perceptual hash.
    records = audit_files(root, given, listing, cfg, console)

    # 3. Every class must keep at least one usable image.
    counts = count_classes(classes, records)
    check_counts(root, counts, records)

    # 4. Exact and near duplicates among the usable files, and those linking a fixed test set to the rest.
    groups = find_duplicates(records, cfg.near_duplicate_distance)
    return AuditOutcome(
        data_dir=str(root),
        classes=classes,
        files=records,
        counts=counts,
        duplicate_groups=groups,
        skipped=listing.skipped,
        digest=data_digest(records, classes if positive else None),
        wall_s=time.monotonic() - started,
        near_duplicate_distance=cfg.near_duplicate_distance,
        max_per_class=max_per_class,
        labels_csv=str(sources.labels_csv.expanduser().resolve()) if sources.labels_csv else "",
        test_dir=given.get("test", ""),
        val_dir=given.get("validation", ""),
        positive=positive,
        test_duplicates=test_duplicates(groups, records),
    )


def listing_fingerprint(data_dir: Path, sources: Sources | None = None) -> str:
    """SHA-256 of what the audit would look at: name, kind, size, mtime of every entry walked, of
    the given folders too, and the labels CSV's bytes.

    Cheap (no image is read), so the study can skip the audit when nothing in the data changed.
    """
    folders = [check_data_dir(data_dir)]
    if sources is not None:
        folders += [check_data_dir(folder) for folder in sources.given().values()]
    digest = hashlib.sha256()
    for root in folders:
        digest.update(str(root).encode("utf-8", "surrogateescape") + b"\0")
        for top in sorted(os.scandir(root), key=lambda e: e.name):
            digest.update(entry_line(Path(top.path), top.name))
            if top.is_dir() and not top.name.startswith("."):
                for key, kind, _ in walk(Path(top.path), top.name, frozenset({identity(Path(top.path))})):
                    if kind != "skip":
                        digest.update(entry_line(root / key, key))
    if sources is not None and sources.labels_csv is not None:
        try:
            digest.update(Path(sources.labels_csv).expanduser().read_bytes())
        except OSError as exc:
            raise DataError(f"labels CSV `{sources.labels_csv}` cannot be read "
                            f"({exc.strerror or exc})") from None
    return digest.hexdigest()


def entry_line(path: Path, rel: str) -> bytes:
    try:
        info = path.stat()  # follows links: a replaced target counts as a change
    except OSError:
        info = path.lstat()
    kind = "d" if path.is_dir() else "f"
    return f"{rel}\0{kind}\0{info.st_size}\0{info.st_mtime_ns}\n".encode("utf-8", "surrogateescape")


# --- 1. the folder -----------------------------------------------------------------------------


def check_data_dir(data_dir: Path) -> Path:
    return check_folder(data_dir)


# --- 2. reading the files ----------------------------------------------------------------------


def audit_files(root: Path, given: dict[str, str], listing: Listing, cfg: AuditConfig,
                console: Console) -> list[FileRecord]:
    """One FileRecord per file, in listing order, with progress; fixed splits and groups kept."""
    records = []
    with console.progress("auditing files", total=len(listing.files), unit="files") as progress:
        for key, label in listing.files:
            record = audit_file(file_path(root, given, key), key, label, cfg)
            record.split, record.group = listing.fixed.get(key, ""), listing.groups.get(key, "")
            records.append(record)
            progress.update(1)
    return records


def audit_file(path: Path, rel: str, label: str, cfg: AuditConfig) -> FileRecord:
    decoded = read_image(path, cfg)
    check = decoded.check
    return FileRecord(
        path=rel,
        label=label,
        verdict=check.verdict,
        reason=check.reason,
        size_bytes=check.size_bytes,
        sha256=decoded.sha256,
        format=check.format,
        mode=check.mode,
        width=check.width,
        height=check.height,
        phash=perceptual_hash(decoded.image) if decoded.image is not None else "",
    )


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (pHash) as 16 hex digits.

    The gray image is shrunk to 32×32, its 2-D DCT taken, and each of the 8×8 lowest frequencies
    becomes one bit: above the median or not. Re-encoding, resizing and small colour changes
    move few bits; a different picture moves about half of them.
    """
    import numpy as np
    from PIL import Image

    gray = image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)  # (32, 32)
    basis = dct_matrix(HASH_SIDE)  # (32, 32)
    coefficients = basis @ pixels @ basis.T  # (32, 32) 2-D DCT-II
    low = coefficients[:HASH_BITS_SIDE, :HASH_BITS_SIDE].ravel()  # (64,)
    bits = low > np.median(low)
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def dct_matrix(n: int) -> np.ndarray:
    """Rows k of the (unnormalised) DCT-II basis: cos(pi * (2i + 1) * k / 2n)."""
    import numpy as np

    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


# --- 3. counting -------------------------------------------------------------------------------


def count_classes(classes: list[str], records: list[FileRecord]) -> list[ClassCount]:
    counts = []
    for label in classes:
        mine = [r for r in records if r.label == label]
        counts.append(ClassCount(
            label=label,
            usable=sum(r.verdict != "rejected" for r in mine),
            converted=sum(r.verdict == "converted" for r in mine),
            rejected=sum(r.verdict == "rejected" for r in mine),
        ))
    return counts


def check_counts(root: Path, counts: list[ClassCount], records: list[FileRecord]) -> None:
    for count in counts:
        if count.usable == 0:
            reasons = [f"{r.path}: {r.reason}" for r in records if r.label == count.label][:3]
            raise DataError(f"class folder `{root / count.label}` has no usable image: all "
                            f"{count.rejected} file(s) were rejected (e.g. {'; '.join(reasons)}); "
                            "add readable JPEG/PNG/BMP/GIF/WebP images or remove the folder")


def data_digest(records: list[FileRecord], classes: list[str] | None = None) -> str:
    """The data's identity: SHA-256 over the sorted (path, class, SHA-256) of usable files, with
    their fixed split and group where the user gave one, and the class order where it was chosen."""
    digest = hashlib.sha256()
    if classes is not None:
        digest.update(("classes\0" + "\0".join(classes) + "\n").encode())
    for path, label, sha, split, group in sorted((r.path, r.label, r.sha256, r.split, r.group)
                                                 for r in records if r.verdict != "rejected"):
        given = f"\0{split}\0{group}" if split or group else ""
        digest.update(f"{path}\0{label}\0{sha}{given}\n".encode())
    return digest.hexdigest()


# --- 4. duplicates -----------------------------------------------------------------------------


def find_duplicates(records: list[FileRecord], max_distance: int) -> list[DuplicateGroup]:
    """Exact groups (same SHA-256), then near groups (pHash within `max_distance` bits).

    Identical files are also near each other; a near group made only of one exact group's files
    is not repeated.
    """
    kept = [r for r in records if r.verdict != "rejected"]
    exact = exact_groups(kept)
    near = near_groups(kept, max_distance)
    exact_sets = {frozenset(group) for group in exact}
    by_path = {r.path: r for r in kept}
    groups = [make_group("exact", g, by_path) for g in exact]
    groups += [make_group("near", g, by_path) for g in near if frozenset(g) not in exact_sets]
    return groups


def exact_groups(records: list[FileRecord]) -> list[list[str]]:
    by_sha: dict[str, list[str]] = {}
    for r in records:
        by_sha.setdefault(r.sha256, []).append(r.path)
    return sorted(sorted(paths) for paths in by_sha.values() if len(paths) > 1)


def near_groups(records: list[FileRecord], max_distance: int) -> list[list[str]]:
    """Files linked, transitively, by pHash distances ≤ `max_distance` (connected components)."""
    import numpy as np

    if len(records) < 2:
        return []
    hashes = np.array([int(r.phash, 16) for r in records], dtype=np.uint64)  # (N,)
    component = near_components(hashes, max_distance)  # (N,) component id per file
    members: dict[int, list[str]] = {}
    for index, comp in enumerate(component.tolist()):
        members.setdefault(comp, []).append(records[index].path)
    return sorted(sorted(paths) for paths in members.values() if len(paths) > 1)


def near_components(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Component id per hash: hashes linked, transitively, by distances ≤ `max_distance`.

    Equal hashes are one node (a folder of identical copies costs no pairs); the close pairs
    among the distinct hashes arrive a bounded chunk at a time and are folded into the
    components whenever EDGE_BUDGET of them have gathered, so memory stays O(N + chunk).
    """
    import numpy as np

    distinct, node = np.unique(hashes, return_inverse=True)  # (U,), (N,) index into distinct
    n = len(distinct)
    label = np.arange(n)  # (U,) a representative node per distinct hash
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    gathered = 0
    for rows, cols in close_pair_chunks(distinct, max_distance):
        pending.append((rows, cols))
        gathered += len(rows)
        if gathered >= EDGE_BUDGET:
            label = merge_components(label, pending)
            pending, gathered = [], 0
    label = merge_components(label, pending)
    return label[node.ravel()]


def merge_components(label: np.ndarray, edges: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """New representatives after adding `edges` to the components that `label` describes.

    The old components enter as a star (each node to its representative), so at most U - 1 old
    edges are carried: union-find in bulk, with scipy's connected components as the find.
    """
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not edges:
        return label
    n = len(label)
    rows = np.concatenate([np.arange(n)] + [r for r, _ in edges])  # (U + E,)
    cols = np.concatenate([label] + [c for _, c in edges])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)  # (U,) ids 0..C-1
    _, first = np.unique(component, return_index=True)  # (C,) lowest node of each component
    return first[component]


def close_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose 64-bit hashes differ in at most `max_distance` bits, each once."""
    import numpy as np

    chunks = list(close_pair_chunks(hashes, max_distance))
    if not chunks:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    a = np.concatenate([r for r, _ in chunks])
    b = np.concatenate([c for _, c in chunks])
    order = np.lexsort((np.maximum(a, b), np.minimum(a, b)))
    return np.minimum(a, b)[order], np.maximum(a, b)[order]


def hash_bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of the bands that the search buckets on; together they cover 64 bits.

    Multi-index hashing: two hashes within d bits of each other differ in at most d of d + 1
    disjoint bands, so they agree exactly on at least one (pigeonhole); bucketing on each band
    finds every close pair. A band of w bits puts a random pair in one bucket with odds 2^-w, so
    d + 1 bands cost (d + 1)·2^-w of all pairs: from d ≈ 15 (4-bit bands) that is no better
    than all pairs, and one band of no bits (every hash in one bucket) is used instead.
    """
    count = max_distance + 1
    if count > 64 or 2 ** (64 // count) <= count:
        return [(0, 0)]
    widths = [64 // count + (1 if i < 64 % count else 0) for i in range(count)]
    shifts = [64 - sum(widths[: i + 1]) for i in range(count)]  # band 0 holds the top bits
    return list(zip(shifts, widths, strict=True))


def close_pair_chunks(hashes: np.ndarray,
                      max_distance: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs whose hashes differ in at most `max_distance` bits, PAIR_CHUNK candidates at a time.

    For each band in turn: sort by the band's bits, enumerate the pairs inside each bucket, keep
    those within the distance whose first agreeing band is this one, so every close pair comes
    out exactly once. Work is the number of same-bucket pairs, memory O(N + PAIR_CHUNK).
    """
    import numpy as np

    n = len(hashes)
    if n < 2:
        return
    bands = hash_bands(max_distance)
    for index, (shift, width) in enumerate(bands):
        key = band_key(hashes, shift, width)  # (N,)
        order = np.argsort(key, kind="stable")  # (N,) positions sorted by bucket
        partners, cumulative = bucket_partners(key[order])  # (N,), (N,) later same-bucket partners
        total = int(cumulative[-1])
        for low in range(0, total, PAIR_CHUNK):
            # 1. The q-th same-bucket pair: its first element p and, offset after p, the second.
            q = np.arange(low, min(low + PAIR_CHUNK, total), dtype=np.int64)  # (C,)
            p = np.searchsorted(cumulative, q, side="right")  # (C,) sorted position of the first
            second = p + 1 + (q - (cumulative[p] - partners[p]))  # (C,) sorted position of the second
            a, b = order[p], order[second]
            # 2. Keep pairs within the distance that agree on no earlier band (found there).
            diff = hashes[a] ^ hashes[b]  # (C,) uint64
            keep = popcount(diff) <= max_distance
            for earlier_shift, earlier_width in bands[:index]:
                keep[keep] &= band_key(diff[keep], earlier_shift, earlier_width) != 0
            yield a[keep], b[keep]


def band_key(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    """The `width` bits of each hash starting at bit `shift` (all zero for a band of no bits)."""
    import numpy as np

    if width == 0:
        return np.zeros(len(hashes), dtype=np.uint64)
    mask = np.uint64((1 << width) - 1)
    return (hashes >> np.uint64(shift)) & mask


def bucket_partners(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sorted position: how many later positions share its bucket, and the running total."""
    import numpy as np

    n = len(sorted_keys)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])  # (B,) bucket starts
    ends = np.r_[starts[1:], n]  # (B,) one past each bucket
    bucket = np.repeat(np.arange(len(starts)), ends - starts)  # (N,) bucket of each position
    partners = ends[bucket] - np.arange(n) - 1  # (N,)
    return partners, np.cumsum(partners)


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element (numpy ≥ 2 has it built in; older numpy: byte table)."""
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    table = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)
    as_bytes = values.view(np.uint8).reshape(*values.shape, 8)  # (..., 8)
    return table[as_bytes].sum(axis=-1, dtype=np.uint8)


def test_duplicates(groups: list[DuplicateGroup], records: list[FileRecord]) -> list[DuplicateGroup]:
    """The groups that link a fixed test image (a given test folder's, or a CSV's test rows) to an
    image outside the test: the leakage a given test set can carry into training."""
    in_test = {r.path for r in records if r.split == "test"}
    return [g for g in groups
            if any(p in in_test for p in g.files) and not all(p in in_test for p in g.files)]


def make_group(kind: str, paths: list[str], by_path: dict[str, FileRecord]) -> DuplicateGroup:
    labels = [by_path[p].label for p in paths]
    return DuplicateGroup(kind=kind, files=paths, labels=labels, cross_class=len(set(labels)) > 1)


# --- the readable summary ----------------------------------------------------------------------


SHORT_FILES = 5  # rejected / converted files the short summary names
SHORT_GROUPS = 3  # duplicate groups it shows


def summary(outcome: AuditOutcome, full: bool = True, full_list: Path | None = None) -> str:
    """A text report: counts per class, rejected and converted files, duplicates, skips.

    `full` lists every file and group; otherwise the first few of each (at most about 30 lines)
    and where the full text is (`full_list`).
    """
    usable = sum(c.usable for c in outcome.counts)
    converted = sum(c.converted for c in outcome.counts)
    rejected = sum(c.rejected for c in outcome.counts)
    sample = (f" (a sample of at most {outcome.max_per_class} per class)"
              if outcome.max_per_class else "")
    lines = [
        f"Audit of {outcome.labels_csv or outcome.data_dir}{sample}",
        *[f"given {name} folder: {folder}" for name, folder in (("test", outcome.test_dir),
                                                               ("validation", outcome.val_dir)) if folder],
        f"{len(outcome.files)} files in {len(outcome.classes)} classes: {usable} usable "
        f"({converted} after conversion), {rejected} rejected; {outcome.wall_s:.1f} s",
        "",
        f"{'class':<24} {'usable':>8} {'converted':>10} {'rejected':>9}",
    ]
    for c in outcome.counts:
        lines.append(f"{c.label:<24} {c.usable:>8} {c.converted:>10} {c.rejected:>9}")

    for verdict, title in (("rejected", "Rejected"), ("converted", "Converted")):
        chosen = [r for r in outcome.files if r.verdict == verdict]
        if chosen:
            lines += ["", f"{title} ({len(chosen)}):"]
            lines += shorten([f"  {r.path}: {r.reason}" for r in chosen], full, SHORT_FILES, "files")

    groups = sorted(outcome.duplicate_groups, key=lambda g: not g.cross_class)  # cross-class first
    lines += ["", f"Duplicate groups: {sum(g.kind == 'exact' for g in groups)} exact (same bytes), "
                  f"{sum(g.kind == 'near' for g in groups)} near (perceptual hashes within "
                  f"{outcome.near_duplicate_distance} of 64 bits); "
                  f"{sum(g.cross_class for g in groups)} span two classes"]
    lines += first_groups(groups, full, SHORT_GROUPS)
    if outcome.test_dir or outcome.test_duplicates:
        leaks = outcome.test_duplicates
        lines += ["", f"Duplicates between the test set and the rest: {len(leaks)} group(s) "
                      "(data.drop_test_duplicates drops their other files from training)"]
        lines += first_groups(leaks, full, SHORT_GROUPS - 1)

    if outcome.skipped:
        lines += ["", f"Not walked ({len(outcome.skipped)}):"]
        lines += shorten([f"  {entry}" for entry in outcome.skipped], full, SHORT_FILES, "entries")
    if not full and full_list is not None:
        lines += ["", f"Every file and group: {full_list} (or run with --list-duplicates)"]
    return "\n".join(printable(line) for line in lines)  # names from outside: no escape codes


def first_groups(groups: list[DuplicateGroup], full: bool, keep: int) -> list[str]:
    """Every group's lines, or the first `keep` groups' and how many more."""
    if full or len(groups) <= keep:
        return group_lines(groups)
    return [*group_lines(groups[:keep]), f"  ... {len(groups) - keep} more groups"]


def group_lines(groups: list[DuplicateGroup]) -> list[str]:
    lines = []
    for g in groups:
        flag = "  CROSS-CLASS: possible label noise" if g.cross_class else ""
        lines.append(f"  {g.kind:<5} {len(g.files)} files{flag}")
        lines += [f"      {path}" for path in g.files]
    return lines



def shorten(lines: list[str], full: bool, keep: int, what: str) -> list[str]:
    if full or len(lines) <= keep:
        return lines
    return [*lines[:keep], f"  ... {len(lines) - keep} more {what}"]
