"""Train/val/test splits grouped by lesion AND patient, stratified by label, seeded.

Two images share a group when they share a lesion id or a patient id (union-find), so neither
the same lesion photographed twice nor two lesions of one patient can sit on both sides.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, Sequence

import numpy as np

from .data import Row

SPLITS = ("train", "val", "test")


class LeakError(AssertionError):
    """A lesion, patient or group appears in more than one split."""


def connected_groups(rows: Sequence[Row]) -> list[int]:
    """One group number per row: rows linked by a shared lesion or patient id get the same number."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for i, row in enumerate(rows):
        keys = [k for k in (row.lesion_key, row.patient_key) if k] or [f"image:{row.dataset}:{row.image_id}:{i}"]
        for key in keys:
            j = first_with.setdefault(key, i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(len(rows))]
    numbering: dict[int, int] = {}
    return [numbering.setdefault(r, len(numbering)) for r in roots]


def _fold_of(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> np.ndarray:
    """Fold number (0..n_splits-1) of every sample from a seeded StratifiedGroupKFold."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    folds = np.full(len(labels), -1)
    n_groups = len(np.unique(groups))
    n_splits = max(2, min(n_splits, n_groups))
    # StratifiedGroupKFold warns and degrades when a class has fewer members than folds.
    if np.min(np.unique(labels, return_counts=True)[1]) >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        splitter = GroupKFold(n_splits=n_splits)
        rng = np.random.default_rng(seed)
        uniq = np.unique(groups)
        shuffled = dict(zip(uniq, rng.permutation(len(uniq))))
        groups = np.array([shuffled[g] for g in groups])
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[held] = fold
    return folds


def assign_splits(rows: Sequence[Row], labels: Sequence[int], *, mode: str = "given", seed: int = 0,
                  val_fraction: float = 0.15, test_fraction: float = 0.15, folds: int | None = None,
                  fold: int = 0) -> list[str]:
    """A split name per row.

    ``mode="given"`` keeps a source's own ``split`` column and splits only rows without one;
    ``"regroup"`` ignores it. With ``folds=K``, fold ``fold`` of a grouped K-fold is the test set
    (cross-validation); val is then carved from the rest the same way.
    """
    if mode not in ("given", "regroup"):
        raise ValueError(f"split mode {mode!r}: use given or regroup")
    labels_arr = np.asarray(labels)
    groups = np.asarray(connected_groups(rows))
    result = [""] * len(rows)
    free = np.ones(len(rows), dtype=bool)
    if mode == "given":
        by_group: dict[int, set[str]] = defaultdict(set)
        for i, row in enumerate(rows):
            if row.split:
                if row.split not in SPLITS:
                    raise ValueError(f"{row.path}: split {row.split!r} is not one of {', '.join(SPLITS)}")
                by_group[groups[i]].add(row.split)
        clashes = {g: s for g, s in by_group.items() if len(s) > 1}
        if clashes:
            first = next(i for i in range(len(rows)) if groups[i] in clashes)
            raise LeakError(f"the given splits put one lesion/patient on several sides ({len(clashes)} groups, e.g. "
                            f"{rows[first].group_id}: {sorted(clashes[groups[first]])}); use --split regroup")
        for i in range(len(rows)):
            if groups[i] in by_group:
                result[i] = next(iter(by_group[groups[i]]))
                free[i] = False
    idx = np.flatnonzero(free)
    if len(idx):
        if len(np.unique(groups[idx])) < 3:
            raise ValueError(f"only {len(np.unique(groups[idx]))} lesion/patient groups to split; need at least 3")
        if folds:
            if not 0 <= fold < folds:
                raise ValueError(f"--fold {fold} is outside 0..{folds - 1}")
            test_mask = _fold_of(labels_arr[idx], groups[idx], folds, seed) == fold
        else:
            k = max(2, round(1 / test_fraction))
            test_mask = _fold_of(labels_arr[idx], groups[idx], k, seed) == 0
        rest = idx[~test_mask]
        k_val = max(2, round((1 - (1 / folds if folds else test_fraction)) / val_fraction))
        val_mask = _fold_of(labels_arr[rest], groups[rest], k_val, seed + 1) == 0
        for i in idx[test_mask]:
            result[i] = "test"
        for i, is_val in zip(rest, val_mask):
            result[i] = "val" if is_val else "train"
    assert_no_leak(rows, result)
    return result


def assert_no_leak(rows: Sequence[Row], splits: Sequence[str]) -> None:
    """Raise LeakError if any lesion, patient or linked group is on two sides of the split."""
    sides: dict[str, set[str]] = defaultdict(set)
    for row, split in zip(rows, splits):
        for key in (row.lesion_key, row.patient_key, row.group_id):
            if key:
                sides[key].add(split)
    for group, split in zip(connected_groups(rows), splits):
        sides[f"group#{group}"].add(split)
    leaks = {k: sorted(v) for k, v in sides.items() if len(v) > 1}
    if leaks:
        sample = ", ".join(f"{k} in {'/'.join(v)}" for k, v in list(leaks.items())[:3])
        raise LeakError(f"{len(leaks)} lesions/patients are on more than one side of the split: {sample}")


def subsample(rows: Sequence[Row], splits: Sequence[str], labels: Sequence[int], max_images: int,
              seed: int = 0) -> list[int]:
    """Indices of at most ``max_images`` rows, each split and class kept in proportion (>= 2 per cell if present)."""
    if max_images >= len(rows):
        return list(range(len(rows)))
    rng = np.random.default_rng(seed)
    cells: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, (split, label) in enumerate(zip(splits, labels)):
        cells[(split, label)].append(i)
    chosen: list[int] = []
    for key in sorted(cells):
        members = cells[key]
        take = min(len(members), max(2, round(max_images * len(members) / len(rows))))
        chosen += [members[j] for j in rng.permutation(len(members))[:take]]
    return sorted(chosen)


def split_summary(rows: Iterable[Row], splits: Iterable[str]) -> dict[str, dict[str, int]]:
    """{split: {"images", "malignant", per-dataset counts}} for logs and provenance."""
    summary: dict[str, Counter] = defaultdict(Counter)
    for row, split in zip(rows, splits):
        summary[split]["images"] += 1
        summary[split]["malignant"] += int(row.malignant)
        summary[split][f"{row.dataset}"] += 1
    return {s: dict(summary[s]) for s in SPLITS if s in summary}
