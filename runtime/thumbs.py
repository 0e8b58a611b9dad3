"""Thumbnails for the review page, made from pixels the sorter already decoded (no second decode).

``OUT/.dermsort/thumbs/<sha256>.jpg``: named by content, so the same image sorted twice shares one
thumbnail and the page finds it from results.csv's sha256 column alone.

The sorter encodes a thumbnail in its decode threads (``encode_thumbnail``: the CPU part) and writes
it from its main thread after the batch is placed (``write_thumbnail``), so nothing is written into
OUT concurrently with placement, and a thumbnail never re-creates an output folder that was removed
mid-run (only ``thumbs/`` itself is ever created, inside an existing ``.dermsort/``).
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


def encode_thumbnail(img: Image.Image, thumbs_dir: Path | None = None, sha256: str = "") -> bytes | None:
    """JPEG bytes of a thumbnail of ``img`` (not modified); None when ``thumbs_dir`` already has one for
    ``sha256`` or anything fails (never raises)."""
    try:
        if thumbs_dir is not None:
            name = thumb_name(sha256)
            if name is None or (Path(thumbs_dir) / name).exists():
                return None
        # one box reduction by a whole factor (the cheapest resampling Pillow has: ~0.1 ms for a
        # 400x300 image) to a longest side of about THUMB_SIDE (2/3 to 3/2 of it)
        factor = max(1, round(max(img.size) / THUMB_SIDE))
        small = img.reduce(factor) if factor > 1 else img
        if small.mode != "RGB":
            small = small.convert("RGB")
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=THUMB_QUALITY)
        return buf.getvalue()
    except Exception as exc:  # noqa: BLE001 - a thumbnail must never stop or change a sort
        log.debug("thumbnail not made: %s", exc)
        return None


def write_thumbnail(thumbs_dir: Path, sha256: str, data: bytes | None) -> None:
    """Write ``thumbs_dir/<sha256>.jpg`` atomically (temp file + rename). Never raises; creates
    ``thumbs_dir`` but never its parents."""
    name = thumb_name(sha256)
    if not data or name is None:
        return
    folder = Path(thumbs_dir)
    tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        # os-level calls: a thumbnail is a few KB, so the system calls are most of its cost
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:
            folder.mkdir(exist_ok=True)  # not parents: a removed output folder stays removed
            fd = os.open(tmp, flags, 0o644)
        try:
            if os.write(fd, data) != len(data):
                raise OSError("short write")
        finally:
            os.close(fd)
        os.rename(tmp, folder / name)
    except Exception as exc:  # noqa: BLE001 - never into the caller
        log.debug("thumbnail %s not written: %s", name, exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def save_thumbnail(img: Image.Image, thumbs_dir: Path, sha256: str) -> None:
    """Encode and write the thumbnail of an already-decoded image (both steps in the calling thread).
    Never raises; ``img`` is not modified."""
    write_thumbnail(thumbs_dir, sha256, encode_thumbnail(img, thumbs_dir, sha256))
