"""Thumbnails for the review page, made from pixels the sorter already decoded (no second decode).

``OUT/.dermsort/thumbs/<sha256>.jpg``: named by content, so the same image sorted twice shares one
thumbnail and the page finds it from results.csv's sha256 column alone.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

#: longest side of a thumbnail in pixels, roughly (the page shows them at about 150 px)
THUMB_SIDE = 160
#: JPEG quality; a 160x120 dermoscopy thumbnail is 4-7 KB at this quality (<= ~15 KB each)
THUMB_QUALITY = 70
_SHA = re.compile(r"[0-9a-f]{64}")


def thumb_name(sha256: str) -> str | None:
    """The thumbnail's file name for a content hash; None for anything that is not a sha256 (untrusted CSV)."""
    return f"{sha256}.jpg" if _SHA.fullmatch(sha256 or "") else None


def save_thumbnail(img: Image.Image, thumbs_dir: Path, sha256: str) -> None:
    """Write ``thumbs_dir/<sha256>.jpg`` from an already-decoded image, atomically (temp file + rename).

    Never raises: a thumbnail is a convenience, and a failure here must not stop or change a sort.
    ``img`` is not modified (it goes on to the model).
    """
    try:
        name = thumb_name(sha256)
        if name is None:
            return
        target = Path(thumbs_dir) / name
        if target.exists():
            return
        # one box reduction by a whole factor (the cheapest resampling Pillow has: ~0.1 ms for a
        # 400x300 image) to a longest side of about THUMB_SIDE (2/3 to 3/2 of it)
        factor = max(1, round(max(img.size) / THUMB_SIDE))
        small = img.reduce(factor) if factor > 1 else img
        if small.mode != "RGB":
            small = small.convert("RGB")
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=THUMB_QUALITY)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(buf.getvalue())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - never into the caller
        log.debug("thumbnail for %s not written: %s", sha256[:12] if isinstance(sha256, str) else sha256, exc)
