"""Real images for INT8 calibration and the labelled held-out set for the parity gate.

One calibration source (files decoded by dermsort.runtime.preprocess, exactly as the sorter does)
adapted to each toolkit: an ONNX Runtime ``CalibrationDataReader`` and an ``nncf.Dataset``.
Never random tensors: activation ranges from noise are not the ranges of dermoscopy images.
"""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from dermsort.runtime.errors import DermsortError
# the one labels.csv reader; re-exported here for the callers that read calibration.read_labels
from dermsort.runtime.labels import LabelledImage, read_labels  # noqa: F401
from dermsort.runtime.metadata import PreprocessSpec
from dermsort.runtime.preprocess import IMAGE_EXTENSIONS, UnreadableImage, preprocess_file

log = logging.getLogger(__name__)

#: the split that calibrates INT8 when a labels.csv is given (never the gate's split: no leakage)
CALIB_SPLIT = "train"
#: the split the parity gate runs on by default
GATE_SPLIT = "val"


def _is_csv(source: str | os.PathLike) -> bool:
    return Path(source).suffix.lower() == ".csv"


def _scan(folder: Path) -> list[Path]:
    exts = set(IMAGE_EXTENSIONS)
    return sorted(p.resolve() for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def calibration_files(sources: Iterable[str | os.PathLike], count: int, exclude: Iterable[Path] = (),
                      seed: int = 0) -> list[Path]:
    """Up to ``count`` image files, drawn as an even mix across the sources (data sets).

    A labels.csv contributes only rows of its train split (``CALIB_SPLIT``); a folder contributes its
    images minus every file that is a val/test (non-train) row of any labels.csv given, so a folder of
    images cannot smuggle gate or test images into calibration. ``exclude`` (the labelled gate set)
    is always left out: calibrating on the images that judge the result would flatter it.

    Stratified round-robin: one queue per source, each shuffled with ``seed``; one file from each
    non-empty queue in turn until ``count`` is reached. Every data set gets an equal share (a big set
    cannot crowd out a small one, e.g. ham10000's 3,122 train images vs ph2's 112) until a small
    source runs out, then the rest is filled from the others.
    """
    sources = [Path(s) for s in sources]
    excluded = {Path(p).resolve() for p in exclude}
    held_out: set[Path] = set()
    groups: dict[str, list[Path]] = {}
    for source in sources:
        if _is_csv(source):
            rows = read_labels(source, None)
            # a CSV without a split column: every row may calibrate (as read_labels(..., "train") reads it)
            calib = [r for r in rows if r.split in (CALIB_SPLIT, "")]
            held_out |= {r.path for r in rows if r.split not in (CALIB_SPLIT, "")}
            groups[str(source)] = [r.path for r in calib]
        elif source.is_dir():
            groups[str(source)] = _scan(source)
        else:
            raise DermsortError(f"calibration source not found (a folder of images or a labels.csv): {source}")
    rng = random.Random(seed)
    queues = []
    for key, files in groups.items():  # in the order given: the mix does not depend on path names
        kept = [p for p in files if p not in excluded and p not in held_out]
        dropped = len(files) - len(kept)
        if dropped:
            log.info("calibration: %d file(s) of %s are gate/val/test images and were left out", dropped, key)
        rng.shuffle(kept)
        queues.append(kept)
    chosen: list[Path] = []
    seen: set[Path] = set()
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                path = queue.pop()
                if path not in seen:
                    seen.add(path)
                    chosen.append(path)
    if not chosen:
        raise DermsortError("no calibration images found in " + ", ".join(map(str, sources)))
    return chosen


def mix(files: Iterable[Path], sources: Iterable[str | os.PathLike]) -> dict[str, int]:
    """How many of ``files`` came from each source: a labels.csv counts under its data set folder's name."""
    roots = []
    for source in sources:
        source = Path(source)
        root = (source.parent if _is_csv(source) else source).resolve()
        roots.append((root, source.parent.name if _is_csv(source) else source.name))
    counts: dict[str, int] = {}
    for path in files:
        name = next((label for root, label in roots if Path(path).is_relative_to(root)), "other")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def gate_set(labelled: Iterable[str | os.PathLike], calib: Iterable[str | os.PathLike],
             split: str = GATE_SPLIT) -> tuple[list[LabelledImage], list[str]]:
    """The parity gate's labelled images: the ``split`` rows of EVERY ``--labelled`` CSV, else of every
    CSV among the calibration sources (folders carry no labels). A file listed twice counts once."""
    csvs = [str(p) for p in labelled] or [str(p) for p in calib if _is_csv(p)]
    rows: list[LabelledImage] = []
    seen: set[Path] = set()
    for path in csvs:
        for row in read_labels(path, split):
            if row.path not in seen:
                seen.add(row.path)
                rows.append(row)
    return rows, csvs


def per_dataset(rows: Iterable[LabelledImage]) -> dict[str, dict[str, int]]:
    """{data set: {n_images, n_malignant}} -- what the gate (or calibration) rests on, set by set."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"n_images": 0, "n_malignant": 0})
    for row in rows:
        entry = counts[row.dataset or row.source]
        entry["n_images"] += 1
        entry["n_malignant"] += int(row.malignant)
    return {name: dict(counts[name]) for name in sorted(counts)}


def load_tensors(paths: Iterable[Path], spec: PreprocessSpec, skip_concerns: bool) -> tuple[np.ndarray, list[int]]:
    """Preprocess files with the runtime's own path; returns (N,3,H,W) float32 and the indices kept."""
    tensors, kept = [], []
    for i, path in enumerate(paths):
        try:
            tensor, info = preprocess_file(path, spec)
        except (UnreadableImage, OSError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        if skip_concerns and info.concerns:
            log.info("calibration: skipping %s (%s)", path, "; ".join(info.concerns))
            continue
        tensors.append(tensor)
        kept.append(i)
    if not tensors:
        raise DermsortError("none of the images could be read")
    return np.stack(tensors), kept


def batches(tensors: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(tensors), size):
        yield np.ascontiguousarray(tensors[start:start + size])


def ort_reader(tensors: np.ndarray, input_name: str = "input", batch_size: int = 8):
    """An onnxruntime.quantization CalibrationDataReader over the preprocessed real images."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(list(batches(tensors, batch_size)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._batches = iter(list(batches(tensors, batch_size)))

    return _Reader()


def nncf_dataset(tensors: np.ndarray):
    """The same calibration images as an ``nncf.Dataset`` (one image per item)."""
    import nncf

    return nncf.Dataset([tensors[i:i + 1] for i in range(len(tensors))])
