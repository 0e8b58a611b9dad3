"""The non-dermoscopy image list (``ood/ood.csv``): what the not-dermoscopy gate is fitted, chosen and judged on.

It is deliberately not a ``labels.csv`` (no dermoscopy reader may take these images as training data).
Columns: ``file`` (relative to the csv), ``kind`` (clinical-photo, everyday-photo, ...), ``source``,
``label``, ``malignant_class`` (1 = a malignant lesion in a clinical photo), ``split`` (train/val/test).
Torch-free: fit-gate (train/), the export's parity gate (export/) and ``evaluate`` read it.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from .errors import DermsortError

REQUIRED = ("file", "kind", "split")


def read_ood(folder: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """``ood.csv`` rows (of ``split`` when given) with an absolute ``path``; a clear error when it is not one."""
    folder = Path(folder)
    csv_path = folder / "ood.csv" if folder.is_dir() else folder
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DermsortError(f"cannot read the non-dermoscopy list {csv_path}: {exc}") from None
    missing = [c for c in REQUIRED if rows and c not in rows[0]]
    if not rows or missing:
        raise DermsortError(f"{csv_path} is not an ood.csv (needs columns {', '.join(REQUIRED)}"
                            f"{'; missing ' + ', '.join(missing) if missing else '; it has no rows'})")
    for row in rows:
        row["path"] = os.fspath(csv_path.parent / row["file"])
        try:
            row["malignant_class"] = int(row.get("malignant_class") or 0)
        except ValueError:
            row["malignant_class"] = 0
    return [r for r in rows if split is None or r["split"] == split]
