"""Real images for INT8 calibration and the labelled held-out set for the parity gate.

One calibration source (files decoded by dermsort.runtime.preprocess, exactly as the sorter does)
adapted to each toolkit: an ONNX Runtime ``CalibrationDataReader`` and an ``nncf.Dataset``.
Never random tensors: activation ranges from noise are not the ranges of dermoscopy images.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from dermsort.runtime.errors import DermsortError
from dermsort.runtime.metadata import PreprocessSpec
from dermsort.runtime.preprocess import IMAGE_EXTENSIONS, UnreadableImage, preprocess_file

log = logging.getLogger(__name__)

#: the split that calibrates INT8 when a labels.csv is given (never the gate's split: no leakage)
CALIB_SPLIT = "train"
#: the split the parity gate runs on by default
GATE_SPLIT = "val"


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    malignant: int
    source: str


def read_labels(csv_path: str | os.PathLike, split: str | None) -> list[LabelledImage]:
    """Rows of a ../shared/data-style labels.csv (``file`` relative to the CSV's folder); ``split=None``: all."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DermsortError(f"labels file not found: {csv_path}")
    rows: list[LabelledImage] = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or [])
        if not {"file", "malignant"} <= fields:
            raise DermsortError(f"{csv_path} is not a labels.csv (needs the columns file, malignant)")
        for row in reader:
            if split is not None and "split" in fields and row["split"] != split:
                continue
            malignant = str(row["malignant"]).strip()
            if malignant not in ("0", "1"):
                raise DermsortError(f"{csv_path}: malignant must be 0 or 1, got {malignant!r} for {row['file']}")
            rows.append(LabelledImage((csv_path.parent / row["file"]).resolve(), int(malignant),
                                      row.get("source_dataset") or csv_path.parent.name))
    return rows


def _is_csv(source: str | os.PathLike) -> bool:
    return Path(source).suffix.lower() == ".csv"


def _scan(folder: Path) -> list[Path]:
    exts = set(IMAGE_EXTENSIONS)
    return sorted(p.resolve() for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def calibration_files(sources: Iterable[str | os.PathLike], count: int, exclude: Iterable[Path] = (),
                      seed: int = 0) -> list[Path]:
    """Up to ``count`` image files: folders are scanned, labels.csv files give their train split.

    Files of the labelled gate set are excluded (calibrating on the images that judge the result
    would flatter it). Sources are interleaved round-robin so every camera/data set is represented.
    """
    excluded = {Path(p).resolve() for p in exclude}
    groups: dict[str, list[Path]] = defaultdict(list)
    for source in sources:
        source = Path(source)
        if _is_csv(source):
            for row in read_labels(source, CALIB_SPLIT):
                groups[f"{source}:{row.source}"].append(row.path)
        elif source.is_dir():
            groups[str(source)].extend(_scan(source))
        else:
            raise DermsortError(f"calibration source not found (a folder of images or a labels.csv): {source}")
    rng = random.Random(seed)
    queues = []
    for key in sorted(groups):
        files = [p for p in groups[key] if p not in excluded]
        dropped = len(groups[key]) - len(files)
        if dropped:
            log.info("calibration: %d file(s) of %s are in the labelled gate set and were left out", dropped, key)
        rng.shuffle(files)
        queues.append(files)
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


def gate_set(labelled: Iterable[str | os.PathLike], calib: Iterable[str | os.PathLike],
             split: str = GATE_SPLIT) -> tuple[list[LabelledImage], list[str]]:
    """The parity gate's labelled images: ``--labelled`` CSVs, else the ``split`` rows of CSV calibration sources."""
    csvs = [str(p) for p in labelled] or [str(p) for p in calib if _is_csv(p)]
    rows: list[LabelledImage] = []
    for path in csvs:
        rows += read_labels(path, split)
    return rows, csvs


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
