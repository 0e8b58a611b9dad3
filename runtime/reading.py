"""Reading one input: open it safely, make sure nobody is still writing it, hash and decode it.

The descriptor stays open (with its read lease, see ``fileops.WriteGuard``) until the file is
placed, so what is placed and what is removed can be checked against exactly what was classified.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fileops import Busy, Identity, WriteGuard, open_input, pread
from .preprocess import UnreadableImage, preprocess
from .scan import Candidate
from .thumbs import encode_thumbnail

#: files up to this size are read once into memory (hash, decode and copy from the same bytes);
#: larger ones are streamed, so one huge file cannot exhaust memory
MAX_IN_MEMORY = 16 << 20
STILL_WRITTEN = "still open for writing by another program; left for a later run"


@dataclass
class Decoded:
    cand: Candidate
    sha256: str = ""
    #: the file's bytes (None for files larger than MAX_IN_MEMORY: those are streamed)
    data: bytes | None = None
    tensor: np.ndarray | None = None
    concerns: list[str] = field(default_factory=list)
    error: str = ""
    #: the bytes cannot be read at all (permission): nothing can be copied or hashed
    unreadable: bool = False
    #: not placed at all, left where it is with this reason (vanished, still being written, read error)
    skip: str = ""
    dev: int | None = None
    atime_ns: int = 0
    #: what was read and classified (None when it could not be opened)
    identity: Identity | None = None
    #: our read-only descriptor of that inode, open until the file is placed
    fd: int | None = None
    guard: WriteGuard | None = None
    #: the review page's thumbnail (JPEG bytes) made from the decoded pixels; written after placement
    thumb: bytes | None = None

    def writer_started(self) -> bool:
        """True when another program opened the file for writing after we read it."""
        return self.guard is not None and not self.guard.intact()

    def close(self) -> None:
        if self.guard is not None:
            self.guard.release()
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def decode_one(cand: Candidate, spec: Any, hash_only: bool = False, thumbs: Path | None = None) -> Decoded:
    """Read (never through a symlink, never blocking on a FIFO), hash and decode one file.

    ``hash_only``: identity and sha256 only (a source checked before its removal), no decoding.
    ``thumbs``: the review page's thumbnail folder; a thumbnail is encoded from the decoded pixels (no second
    decode) unless that folder already has one for this content."""
    d = Decoded(cand)
    try:
        fd = open_input(cand.path)
    except Busy:  # Windows: a program holds it open for writing (or an antivirus held it past the retries)
        d.skip = STILL_WRITTEN
        return d
    except PermissionError:
        d.error, d.unreadable = "unreadable: permission denied", True
        d.identity = Identity.at(cand.path)
        return d
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            d.skip = "symbolic link (not followed)"
        elif exc.errno == errno.ENOENT:
            d.skip = "vanished before it could be read"
        else:
            d.skip = f"could not be opened ({exc.strerror or exc}); left for a later run"
        return d
    d.fd = fd
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            d.skip = "not a regular file"
            d.close()
            return d
        d.guard = WriteGuard(fd)
        if d.guard.writer_present():
            d.skip = STILL_WRITTEN
            d.close()
            return d
        digest = hashlib.sha256()
        # the bytes are kept only when they will be decoded and copied (hash_only: a source checked before removal)
        chunks: list[bytes] | None = [] if st.st_size <= MAX_IN_MEMORY and not hash_only else None
        offset = 0
        while block := pread(fd, 1 << 20, offset):
            offset += len(block)
            digest.update(block)
            if chunks is not None:
                chunks.append(block)
        after = os.fstat(fd)
    except OSError as exc:  # an I/O error mid-read (a failing card): nothing placed, retried next run
        d.skip = f"read error ({exc.strerror or exc}); left for a later run"
        d.close()
        return d
    if Identity.of(after) != Identity.of(st) or offset != st.st_size:
        d.skip = "changed while being read (still being written?); left for a later run"
        d.close()
        return d
    # the record describes exactly what was read and hashed
    cand.size, cand.mtime_ns, cand.ino, cand.ctime_ns = st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns
    d.dev, d.atime_ns, d.identity = st.st_dev, st.st_atime_ns, Identity.of(st)
    d.sha256 = digest.hexdigest()
    if hash_only:
        return d
    thumb = None if thumbs is None else (lambda img: setattr(d, "thumb", encode_thumbnail(img, thumbs, d.sha256)))
    try:
        if chunks is not None:
            d.data = b"".join(chunks)
            d.tensor, info = preprocess(d.data, spec, cand.path.name, on_image=thumb)
        else:
            with os.fdopen(os.dup(fd), "rb") as fh:
                fh.seek(0)
                d.tensor, info = preprocess(fh, spec, cand.path.name, on_image=thumb)
        d.concerns = info.concerns
    except UnreadableImage as exc:
        d.error = str(exc)
    except Exception as exc:  # never let one file stop the run
        d.error = f"could not decode ({type(exc).__name__}: {str(exc)[:80]})"
    return d
