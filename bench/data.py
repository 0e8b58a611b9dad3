"""Labelled benchmark images: ``labels.csv`` files (file, malignant, split) or folders holding one.

Rows are read by ``dermsort.runtime.labels``, the one labels.csv reader.
"""

from __future__ import annotations

import os
import random
from collections import Counter

from dermsort.runtime.errors import DermsortError
from dermsort.runtime.labels import LabelledImage, read_labels

__all__ = ["LabelledImage", "describe", "load_labelled"]


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
    # keyed by the rows' source_dataset (a labels.csv may mix several), as the report has always shown
    per_set = Counter(im.source for im in images)
    per_set_mal = Counter(im.source for im in images if im.malignant)
    return {"n_images": len(images), "n_malignant": sum(im.malignant for im in images),
            "datasets": {name: {"images": n, "malignant": per_set_mal.get(name, 0)} for name, n in sorted(per_set.items())}}
