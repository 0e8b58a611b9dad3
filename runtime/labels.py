"""The one reader of ``labels.csv``: labelled images as ``LabelledImage`` rows, with one set of rules.

Train, export, bench and the site check all read labelled folders through here, so a CSV that one of
them accepts the others accept too. Torch-free (runtime/), so export and bench can import it without
the train extra. Rules:

- columns ``file`` (or ``path``) relative to the CSV's folder, and ``malignant``; optional ``split``,
  ``source_dataset``, ``dx`` and any others (kept in ``fields``). A UTF-8 BOM and blanks around
  names and values are ignored.
- ``malignant``: 0/1, 0.0/1.0, true/false (any case); anything else is a one-line error naming the
  file, line and value.
- ``split``: lower-cased; "valid"/"validation" mean "val"; "" when the CSV has no split column.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DermsortError

LABELS_NAME = "labels.csv"
#: split names the data sets use for the validation split
SPLIT_ALIASES = {"valid": "val", "validation": "val"}
_TRUE = {"1", "1.0", "true"}
_FALSE = {"0", "0.0", "false"}


class LabelsError(DermsortError, ValueError):
    """A labels.csv that cannot be read (a ValueError too: train's ``--data`` handling catches those)."""


@dataclass(frozen=True)
class LabelledImage:
    """One row of a labels.csv."""

    #: the image, resolved against the CSV's folder
    path: Path
    #: 1 malignant, 0 benign; None only when read with ``malignant_optional`` and the cell was empty
    malignant: int | None
    #: the row's source_dataset column (a labels.csv may mix several), else the data set
    source: str
    #: the data set: the folder that holds the labels.csv (ham10000, isic2019, ph2, ...)
    dataset: str = ""
    #: the row's split, normalised by ``parse_split`` ("" when the CSV has none)
    split: str = ""
    #: the ``file`` cell as written (relative to the CSV's folder)
    file: str = field(default="", compare=False)
    #: every cell of the row, names and values stripped
    fields: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def parse_malignant(value: object, where: str = "") -> int:
    """0/1, 0.0/1.0, true/false -> 0 or 1; anything else raises a one-line ``LabelsError``."""
    text = str(value if value is not None else "").strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise LabelsError(f"{where + ': ' if where else ''}malignant must be 0 or 1 (or true/false), got {value!r}")


def parse_split(value: object) -> str:
    """A split cell -> "train" / "val" / "test" / ...; "valid" and "validation" become "val"."""
    text = str(value or "").strip().lower()
    return SPLIT_ALIASES.get(text, text)


def labels_path(source: str | os.PathLike) -> Path:
    """``source`` itself, or ``source/labels.csv`` when it is a folder; a clear error when neither exists."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / LABELS_NAME
    if not path.is_file():
        raise LabelsError(f"labelled data not found: {source} (give a labels.csv or a folder containing one)")
    return path


def read_rows(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """(column names, rows) of a CSV, names and values stripped, a BOM ignored; a clear error if unreadable."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [(c or "").strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()}
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"cannot read {path}: {exc}") from None
    return columns, rows


def read_labels(source: str | os.PathLike, split: str | None = None, *,
                malignant_optional: bool = False) -> list[LabelledImage]:
    """The rows of one labels.csv (or of the one in folder ``source``), in file order.

    ``split``: only rows of that split (after ``parse_split``); None or "all": every row. A CSV without
    a split column keeps every row. ``malignant_optional``: the malignant column may be missing or a
    cell empty (``malignant`` None; train then labels the row from its ``dx``).
    """
    path = labels_path(source)
    columns, rows = read_rows(path)
    file_column = "file" if "file" in columns else "path" if "path" in columns else None
    missing = [c for c in ("file", "malignant") if (c == "file" and file_column is None)
               or (c == "malignant" and c not in columns and not malignant_optional)]
    if missing:
        raise LabelsError(f"{path} is not a labels.csv: it lacks the column(s) {', '.join(missing)}")
    wanted = None if split in (None, "all") else parse_split(split)
    folder = path.parent
    images = []
    for line, row in enumerate(rows, 2):
        row_split = parse_split(row.get("split"))
        if wanted is not None and "split" in columns and row_split != wanted:
            continue
        cell = row.get("malignant", "")
        malignant = None if malignant_optional and cell == "" else parse_malignant(cell, f"{path} line {line}")
        file = row.get(file_column, "")
        images.append(LabelledImage(path=(folder / file).resolve(), malignant=malignant,
                                    source=row.get("source_dataset") or folder.name, dataset=folder.name,
                                    split=row_split, file=file, fields=row))
    return images
