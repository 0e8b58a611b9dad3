#!/usr/bin/env python3
"""A labelled "site" whose image pipeline differs: one split of a labelled set, re-encoded as JPEG.

    recompress-site.py SET_FOLDER SPLIT QUALITY OUT_FOLDER

Copies the rows of SET_FOLDER/labels.csv with split SPLIT, each image decoded and saved again as JPEG at
QUALITY (Pillow, default chroma subsampling), into OUT_FOLDER with a labels.csv (file, malignant, dx, split):
the folder `dermsort validate --data` and `dermsort sort` take. The same patients and labels as the source,
only the store-and-forward pipeline differs (docs/SITE_CHECK.md: ISIC 2020 at JPEG quality 8).
"""

from __future__ import annotations

import csv
import os
import sys

from PIL import Image


def main(src: str, split: str, quality: int, out: str) -> int:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(src, "labels.csv"), newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split") == split]
    if not rows:
        raise SystemExit(f"no rows with split {split} in {src}/labels.csv")
    with open(os.path.join(out, "labels.csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "malignant", "dx", "split"])
        for row in rows:
            name = os.path.splitext(os.path.basename(row["file"]))[0] + ".jpg"
            with Image.open(os.path.join(src, row["file"])) as im:
                im.convert("RGB").save(os.path.join(out, name), "JPEG", quality=quality)
            writer.writerow([name, row["malignant"], row.get("dx", ""), split])
    print(f"{len(rows)} images of {src} split {split} re-encoded at JPEG quality {quality} in {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
