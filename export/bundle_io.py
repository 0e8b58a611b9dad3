"""Crash-safe bundle writing: one exporter at a time (a lock), a new bundle built beside the old one and
swapped in by rename only when complete, and recovery of a swap a crash interrupted."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from dermsort.runtime.bundle import MANIFEST
from dermsort.runtime.fileops import fsync_dir
from dermsort.runtime.errors import DermsortError

log = logging.getLogger(__name__)

Say = Callable[[str], None]


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One export at a time per output folder (a second one would delete the first one's temp dir)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DermsortError(f"another export into {out} is running") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                lock_path.unlink()


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DermsortError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        # the old bundle is deleted after the swap: never do that to a folder that is not a bundle
        raise DermsortError(f"refusing to replace {out}: it is not empty and holds no {MANIFEST} (not a dermsort bundle)")


def recover(out: Path, say: Say = log.info) -> None:
    """Finish or undo a swap a crash interrupted; remove temp folders of dead exports."""
    olds = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not out.exists() and olds:
        # crashed between "rename old away" and "rename new in": the new one never finished -> restore
        os.rename(olds.pop(), out)
        say(f"restored the previous bundle {out} (an earlier export was interrupted mid-swap)")
    for stale in [*olds, *out.parent.glob(f".{out.name}.new-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_tree(root: Path) -> None:
    """Flush every file to disk and give the tree normal permissions (mkdtemp/mkstemp make them private):
    the sorter service on a device may run as another user than the one who exported."""
    mask = _umask()
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def swap_in(new: Path, out: Path) -> None:
    """Replace ``out`` by the complete folder ``new``: rename old away, rename new in, delete old."""
    _fsync_tree(new)
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{int(time.time())}"
        os.rename(out, old)
    os.rename(new, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- helpers
