"""Labelled benchmark images: ``labels.csv`` files (file, malignant, split) or folders holding one."""

from __future__ import annotations

import csv
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dermsort.runtime.errors import DermsortError

LABELS = "labels.csv"


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    malignant: int
    dataset: str
    split: str


def _csv_path(source: str | os.PathLike) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / LABELS
    if not path.is_file():
        raise DermsortError(f"labelled data not found: {source} (give a labels.csv or a folder containing one)")
    return path


def read_labels(source: str | os.PathLike, split: str | None = "test") -> list[LabelledImage]:
    """Rows of one labels.csv (``file`` relative to its folder, ``malignant`` 1/0), filtered by split.

    ``split=None`` (or "all") keeps every row; a CSV without a ``split`` column keeps every row too.
    """
    path = _csv_path(source)
    root = path.parent
    images = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"file", "malignant"} - set(reader.fieldnames or [])
        if missing:
            raise DermsortError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
        for row in reader:
            row_split = (row.get("split") or "").strip()
            if split not in (None, "all") and "split" in row and row_split != split:
                continue
            try:
                malignant = int(float(row["malignant"]))
            except ValueError:
                raise DermsortError(f"{path}: malignant must be 0/1, got {row['malignant']!r}") from None
            images.append(LabelledImage(path=(root / row["file"]).resolve(), malignant=malignant,
                                        dataset=row.get("source_dataset") or root.name, split=row_split))
    return images


def load_labelled(sources: list[str | os.PathLike], split: str | None = "test", max_images: int | None = None,
                  seed: int = 0) -> list[LabelledImage]:
    """All labelled images of ``sources`` in a stable order; at most ``max_images``, drawn per class.

    The cap keeps the malignant fraction (at least one image of each class when both exist) so a
    quick run still has a sensitivity and an AUC.
    """
    images: list[LabelledImage] = []
    for source in sources:
        images += read_labels(source, split)
    missing = [im.path for im in images if not im.path.is_file()]
    if missing:
        raise DermsortError(f"{len(missing)} labelled image(s) missing, e.g. {missing[0]}")
    images = sorted(set(images), key=lambda im: str(im.path))
    if not images:
        raise DermsortError(f"no labelled images in split {split!r} of: {', '.join(map(str, sources))}")
    if max_images and len(images) > max_images:
        rng = random.Random(seed)
        pos = [im for im in images if im.malignant]
        neg = [im for im in images if not im.malignant]
        n_pos = round(max_images * len(pos) / len(images))
        if pos and neg:
            n_pos = min(max(1, n_pos), max_images - 1)
        n_pos = min(n_pos, len(pos))
        picked = rng.sample(pos, n_pos) + rng.sample(neg, min(len(neg), max_images - n_pos))
        images = sorted(picked, key=lambda im: str(im.path))
    return images


def describe(images: list[LabelledImage]) -> dict[str, object]:
    per_set = Counter(im.dataset for im in images)
    per_set_mal = Counter(im.dataset for im in images if im.malignant)
    return {"n_images": len(images), "n_malignant": sum(im.malignant for im in images),
            "datasets": {name: {"images": n, "malignant": per_set_mal.get(name, 0)} for name, n in sorted(per_set.items())}}
