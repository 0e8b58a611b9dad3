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

#: longest side of a thumbnail in pixels (the page shows them at about 150 px)
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
        w, h = img.size
        scale = THUMB_SIDE / max(w, h, 1)
        small = img
        if scale < 1.0:
            # box-reduce by an integer factor first (cheap), then one bilinear step to the final size
            factor = int(1 / scale) // 2
            if factor >= 2:
                small = small.reduce(factor)
            small = small.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
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
