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
#: thumbnail folders already created by this process (one mkdir per folder, not per thumbnail)
_MADE: set[Path] = set()


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
        folder = Path(thumbs_dir)
        if folder not in _MADE:
            folder.mkdir(parents=True, exist_ok=True)
            _MADE.add(folder)
        # os-level calls: a thumbnail is a few KB, so the syscalls are most of its cost
        tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:  # the folder was removed since: make it again
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, flags, 0o644)
        try:
            data = buf.getbuffer()
            if os.write(fd, data) != len(data):
                raise OSError("short write")
        finally:
            os.close(fd)
        try:
            os.rename(tmp, target)
        except OSError:
            os.unlink(tmp)
            raise
    except Exception as exc:  # noqa: BLE001 - never into the caller
        log.debug("thumbnail for %s not written: %s", sha256[:12] if isinstance(sha256, str) else sha256, exc)
