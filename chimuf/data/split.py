"""Train / validation / test lists (paper 3.1), and the folds of the cross-validation (paper 8).

The paper holds out 20 % of the images for the test and 12.5 % of the rest for validation:

    4 733 usable photos → test 947, validation 473, train 3 313

Two things make this more than a random shuffle:

- Stratified: each class is split in the same proportions (within one image), so the test's
  class balance is the data's.
- Grouped: exact and near duplicates found by the audit, and a labels CSV's groups, travel
  together. A re-encoded copy of a test photo in the training data would let the model remember
  instead of recognise, and the test accuracy would flatter it.

The assignment is a greedy, seeded walk: groups are visited in a seeded random order (largest
groups first), and each goes to the split whose per-class counts it brings closest to their
targets. This hits arbitrary fractions exactly (scikit-learn's StratifiedGroupKFold can only cut
1/k), and the same audit and seed give byte-identical lists. Files are taken in content order
(SHA-256), so the same photos split alike whether they come as folders, nested folders or a CSV.

A split the user gave (a given test or validation folder, a labels CSV's `split` column) is kept
as given, and only the other files are split: with a given test folder, validation takes
`validation_fraction` of the rest and training the remainder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chimuf.core.errors import DataError
from chimuf.core.proportions import images_for_half_width, worst_case_half_width
from chimuf.core.results import AuditOutcome, FileRecord, SplitCount, SplitOutcome, SplitPrecision, digest

if TYPE_CHECKING:
    import numpy as np

    from chimuf.core.config import SplitConfig

SPLITS = ("train", "validation", "test")


def split_dataset(audit: AuditOutcome, cfg: SplitConfig, seed: int, *,
                  drop_test_duplicates: bool = False) -> SplitOutcome:
    """Stratified, duplicate-aware train / validation / test lists of the audit's usable files.

    Files whose split the user fixed (a given folder, a CSV's split column) stay there; the rest
    are split. With `drop_test_duplicates`, the files near-duplicating a fixed test image are left out.
    """
    import numpy as np

    # 1. The usable files in content order (SHA-256, then path): the split depends on the pictures
    #    and their groups, not on their names, so the same photos in another layout split alike.
    check_two_classes(audit)
    usable = sorted((r for r in audit.files if r.verdict != "rejected"), key=lambda r: (r.sha256, r.path))
    dropped = leaked_files(audit) if drop_test_duplicates else set()
    fixed = {r.path: r.split for r in usable if r.split and r.path not in dropped}
    free = [r for r in usable if not r.split and r.path not in dropped]
    paths = [r.path for r in free]
    labels = np.array([audit.classes.index(r.label) for r in free], dtype=np.int64)  # (N,)

    # 2. Duplicate groups and the CSV's groups become units that cannot be cut.
    units = merge_groups(paths, [g.files for g in audit.duplicate_groups] + csv_groups(free))

    # 3. Shares of the free images: a split the user gave takes none of them; train takes the rest.
    shares = free_shares(cfg, set(fixed.values()))
    active = [s for s, share in enumerate(shares) if share > 0]
    if len(active) == len(SPLITS):
        check_class_sizes(audit.classes, labels, shares, cfg)

    # 4. Assign, then make sure no split lost a class to a large group.
    bucket = assign_units(units, labels, len(audit.classes), [shares[s] for s in active], seed)  # (N,)
    split_of = {**{path: SPLITS[active[b]] for path, b in zip(paths, bucket.tolist(), strict=True)}, **fixed}
    # each list in content order too, so the trainings see the same photos in the same order
    content = {r.path: (r.sha256, r.path) for r in usable}
    lists = {name: sorted((path for path, split in split_of.items() if split == name),
                          key=content.__getitem__) for name in SPLITS}
    label_of = {r.path: r.label for r in usable}
    counts = [SplitCount(label, *(sum(label_of[p] == label for p in lists[name]) for name in SPLITS))
              for label in audit.classes]
    check_every_split_has_every_class(counts)

    groups = sorted(sorted(paths[i] for i in unit) for unit in units if len(unit) > 1)
    return SplitOutcome(
        classes=list(audit.classes),
        train=lists["train"],
        validation=lists["validation"],
        test=lists["test"],
        counts=counts,
        groups=groups,
        digest=digest({"classes": audit.classes, **lists}),
        precision=[split_precision(name, len(lists[name]), cfg.small_split_half_width)
                   for name in ("validation", "test")],
        given=sorted(set(fixed.values())),
        dropped=sorted(dropped),
    )


def free_shares(cfg: SplitConfig, given: set[str]) -> list[float]:
    """Shares of the files left to split, train / validation / test: the paper's, but none for a
    split the user gave (the test's 20 % then goes to train and validation)."""
    test = 0.0 if "test" in given else cfg.test_fraction
    validation = 0.0 if "validation" in given else (1 - test) * cfg.validation_fraction
    return [1 - test - validation, validation, test]


def leaked_files(audit: AuditOutcome) -> set[str]:
    """Files outside the fixed test set that near-duplicate one of its images (the audit's list)."""
    in_test = {r.path for r in audit.files if r.split == "test"}
    return {path for g in audit.test_duplicates for path in g.files if path not in in_test}


def csv_groups(records: list[FileRecord]) -> list[list[str]]:
    """The labels CSV's groups, as lists of paths."""
    members: dict[str, list[str]] = {}
    for r in records:
        if r.group:
            members.setdefault(r.group, []).append(r.path)
    return [sorted(paths) for _, paths in sorted(members.items())]


# --- how finely each split can measure ---------------------------------------------------------

# The level of the interval behind the small-split flag ("a 95 % interval on accuracy wider than
# ± limit"); the evaluation's own intervals use evaluate.confidence.
FLAG_CONFIDENCE = 0.95


def split_precision(name: str, n: int, limit: float) -> SplitPrecision:
    """How wide a 95 % interval on an accuracy measured on this split can be, before any model
    exists: at accuracy 0.5, its widest (chimuf.core.proportions)."""
    half = worst_case_half_width(n, FLAG_CONFIDENCE)
    return SplitPrecision(split=name, n=n, half_width=half, confidence=FLAG_CONFIDENCE, limit=limit,
                          needed=images_for_half_width(limit, FLAG_CONFIDENCE), small=half > limit)


def small_split_warnings(split: SplitOutcome) -> list[str]:
    """One console line per split too small to resolve its accuracy to ± its limit."""
    return [
        f"the {p.split} split has {p.n} images: a {p.confidence:.0%} interval on an accuracy measured "
        f"on it is up to ±{p.half_width * 100:.1f} points wide (more than ±{p.limit * 100:g}), so "
        f"smaller differences are noise. About {p.needed} images per split would bring it to "
        f"±{p.limit * 100:g}; until then take the k-fold mean as the main estimate"
        for p in split.precision if p.small
    ]


def fold_assignments(paths: list[str], labels: list[int], groups: list[list[str]], folds: int,
                     seed: int, key: Callable[[str], Any] | None = None) -> list[int]:
    """Fold index (0 … folds-1) of each path: stratified, groups kept whole, deterministic.

    Members of `groups` that are not among `paths` are ignored (a group may reach into the test
    split). The result does not depend on the order of `paths`; it is worked out in `key` order
    (the study's: content, so the same photos in another layout fold alike; default: the path).
    """
    import numpy as np

    if folds < 2:
        raise DataError(f"`kfold.folds` must be at least 2, got {folds}")
    if len(paths) != len(labels) or len(set(paths)) != len(paths):
        raise DataError("fold_assignments needs one label per path and no repeated path; got "
                        f"{len(paths)} paths ({len(set(paths))} distinct) and {len(labels)} labels")

    # 1. Work in `key` order, so the folds depend on the set of files, not on how it was listed.
    order = sorted(range(len(paths)), key=lambda i: (key or str)(paths[i]))
    sorted_paths = [paths[i] for i in order]
    sorted_labels = np.array([labels[i] for i in order], dtype=np.int64)  # (N,)
    classes = sorted(set(labels))
    for label in classes:
        have = int(np.sum(sorted_labels == label))
        if have < folds:
            raise DataError(f"class {label} has {have} image(s) in train+validation; {folds}-fold "
                            f"cross-validation needs at least {folds}. Lower `kfold.folds` or add "
                            "images")

    # 2. Equal shares, the same greedy walk as the split.
    units = merge_groups(sorted_paths, groups)
    dense = np.searchsorted(classes, sorted_labels)  # (N,) class ids 0 … C-1
    assignment = assign_units(units, dense, len(classes), [1 / folds] * folds, seed)

    # 3. Back to the caller's order.
    result = [0] * len(paths)
    for position, index in enumerate(order):
        result[index] = int(assignment[position])
    return result


# --- the pieces --------------------------------------------------------------------------------


def merge_groups(paths: list[str], groups: list[list[str]]) -> list[list[int]]:
    """Units of indices into `paths`: overlapping groups merged (union-find), the rest singletons.

    Units are ordered by their first index, members ascending.
    """
    index = {path: i for i, path in enumerate(paths)}
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for group in groups:
        members = [index[p] for p in group if p in index]
        for other in members[1:]:
            a, b = root(members[0]), root(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    units: dict[int, list[int]] = {}
    for i in range(len(paths)):
        units.setdefault(root(i), []).append(i)
    return sorted(units.values())


def assign_units(units: list[list[int]], labels: np.ndarray, n_classes: int, shares: list[float],
                 seed: int) -> np.ndarray:
    """Bucket id per item: each unit, largest first, goes where it best fits the class targets.

    The fit of putting a unit with class counts u into bucket s is the growth of the squared
    distance between that bucket's class counts and its targets (share_s × class total):
    Σ_c (A_sc + u_c − T_sc)² − (A_sc − T_sc)² = Σ_c u_c (2 (A_sc − T_sc) + u_c).
    """
    import numpy as np

    unit_counts = np.zeros((len(units), n_classes), dtype=np.int64)  # (U, C)
    for u, members in enumerate(units):
        np.add.at(unit_counts[u], labels[members], 1)
    targets = np.outer(shares, unit_counts.sum(axis=0))  # (S, C)
    filled = np.zeros_like(targets)  # (S, C)

    # A seeded shuffle, then largest units first (stable, so ties keep the shuffled order).
    shuffled = np.random.default_rng(seed).permutation(len(units))
    sizes = unit_counts.sum(axis=1)  # (U,)
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]

    bucket_of_unit = np.empty(len(units), dtype=np.int64)
    for u in order:
        counts = unit_counts[u]  # (C,)
        growth = (counts * (2 * (filled - targets) + counts)).sum(axis=1)  # (S,)
        bucket = int(np.argmin(growth))
        filled[bucket] += counts
        bucket_of_unit[u] = bucket

    assignment = np.empty(len(labels), dtype=np.int64)  # (N,)
    for u, members in enumerate(units):
        assignment[members] = bucket_of_unit[u]
    return assignment


# --- checks ------------------------------------------------------------------------------------


def check_two_classes(audit: AuditOutcome) -> None:
    if len(audit.classes) != 2:
        raise DataError(f"chimuf studies binary classification, but the data folder "
                        f"`{audit.data_dir}` has {len(audit.classes)} classes "
                        f"({', '.join(audit.classes)}); keep exactly two class sub-folders")


def check_class_sizes(classes: list[str], labels: np.ndarray, shares: list[float],
                      cfg: SplitConfig) -> None:
    """Each class must be large enough for every split to get at least one of its images."""
    import numpy as np

    needed = math.ceil(1 / min(shares) - 1e-9)
    for c, label in enumerate(classes):
        have = int(np.sum(labels == c))
        if have < needed:
            raise DataError(
                f"class `{label}` has {have} usable image(s); a split with test_fraction "
                f"{cfg.test_fraction:g} and validation_fraction {cfg.validation_fraction:g} needs "
                f"at least {needed} per class so that train, validation and test each get one. "
                "Add images or change `split.test_fraction` / `split.validation_fraction`"
            )


def check_every_split_has_every_class(counts: list[SplitCount]) -> None:
    for count in counts:
        for name in SPLITS:
            if getattr(count, name) == 0:
                raise DataError(
                    f"the {name} split got no image of class `{count.label}`: its images sit in "
                    "duplicate groups too large to spread over three splits. Inspect the groups "
                    "with `chimuf audit`, or lower `audit.near_duplicate_distance`"
                )
