"""Durable, identity-checked file operations: the one home of every low-level step the sorter's
promises rest on (hashing, fsync, never-replacing links, "is somebody still writing this file?"),
with one backend per operating system behind one contract, so that reading, placement, recovery
and the sorter never ask which system they run on.

- ``sha256_file``: the package's only file hasher (bundles, checkpoints, sorter).
- ``fsync_file`` / ``fsync_dir``: make data / a directory entry durable (macOS: ``F_FULLFSYNC``).
- ``write_durable`` / ``copy_durable``: write, keep the original time stamps, fsync.
- ``open_input``: a read-only descriptor of an input (never through a symlink); ``Busy`` when another
  program holds it (Windows: open denying writers, sharing violation).
- ``link`` / ``link_open_file`` / ``rename_no_replace``: new names that never replace an existing one.
- ``Identity``: (device, inode, ctime, size, mtime) of what was read and classified; compared with
  what is placed and what is removed right before each irreversible step. ctime cannot be set by
  a user program, so an in-place rewrite that restores size and mtime (``cp -p``, ``exiftool -P``,
  ``unzip -o``) still shows (on Linux and macOS; Windows' st_ctime is the creation time).
- ``WriteGuard``: whether another process has the file open for writing, and whether one started to
  while we hold it. See docs/RELIABILITY.md ("writers still writing", "Per operating system").
- ``retry_transient``: antivirus / indexer errors (WinError 5, 32) retried with backoff.
- ``portable_name`` / ``name_key``: output names this system stores as given, and the key under which
  two names are one file here (case-insensitive, normalisation-insensitive folders).

The backend is chosen once from ``sys.platform`` (``BACKEND``); the contract every backend keeps is in
tests/runtime/test_os_contract.py, which runs the Windows and macOS backends on Linux too, with their OS
calls replaced by recorded behaviour.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ._shared import Busy, Moved, retry_transient as _retry


def _select(platform: str = sys.platform) -> ModuleType:
    if platform == "win32":
        from . import windows as backend
    elif platform == "darwin":
        from . import darwin as backend
    else:
        from . import linux as backend
    return backend


BACKEND = _select()
NAME: str = BACKEND.NAME
READ_FLAGS: int = BACKEND.READ_FLAGS
CREATE_FLAGS: int = BACKEND.CREATE_FLAGS
#: flags every other ``os.open`` of a data file adds (Windows: binary mode, or CRLF is rewritten)
OPEN_FLAGS: int = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
CASE_INSENSITIVE: bool = BACKEND.CASE_INSENSITIVE
pread = BACKEND.pread
fsync_file = BACKEND.fsync_file
fsync_dir = BACKEND.fsync_dir
open_input = BACKEND.open_input
link = BACKEND.link
link_open_file = BACKEND.link_open_file
rename_no_replace = BACKEND.rename_no_replace
lock_exclusive = BACKEND.lock_exclusive
is_transient = BACKEND.is_transient
remove = BACKEND.remove
portable_name = BACKEND.portable_name
input_name_problem = BACKEND.input_name_problem
name_key = BACKEND.name_key
WriteGuard = BACKEND.WriteGuard
if NAME == "linux":  # the names tests and tools reach the Linux mechanisms by
    from .linux import _F_GETLEASE, _F_SETLEASE, PROC_SCAN_TTL, fcntl, open_for_writing  # noqa: F401


def retry_transient(op, *args):
    """``op(*args)``, retried with backoff while it fails transiently here (see ``_shared.RETRY_DELAYS``)."""
    return _retry(op, *args, is_transient=is_transient)


def rename(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``os.rename`` through transient errors (a rename onto a name nobody else uses)."""
    retry_transient(os.rename, source, target)


def unlink(path: str | os.PathLike) -> None:
    """Delete a file this run owns (a verified source, a staging copy): through transient errors, and on
    Windows also one with the read-only attribute (Linux ignores that bit for a deletion)."""
    retry_transient(BACKEND.remove, path)


__all__ = ["BACKEND", "Busy", "Moved", "CASE_INSENSITIVE", "CREATE_FLAGS", "Identity", "NAME", "OPEN_FLAGS", "READ_FLAGS",
           "WriteGuard", "copy_durable", "fsync_dir", "fsync_file", "input_name_problem", "is_transient", "link", "link_open_file",
           "lock_exclusive", "name_key", "open_input", "portable_name", "pread", "rename", "rename_no_replace",
           "retry_transient", "sha256_fd", "sha256_file", "unlink", "write_durable"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20, drop_cache: bool = False) -> str:
    """sha256 of a file; ``drop_cache`` reads it back from the disk, not from the page cache we just wrote."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if drop_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_fd(fd: int, chunk: int = 1 << 20) -> str:
    """sha256 of an open file from its start (pread: the descriptor's offset is not used)."""
    digest, offset = hashlib.sha256(), 0
    while block := pread(fd, chunk, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def _set_times(fd: int, path: str | os.PathLike, atime_ns: int, mtime_ns: int) -> None:
    # Windows sets times by path only (os.utime has no descriptor form there)
    os.utime(fd if os.utime in os.supports_fd else path, ns=(atime_ns or mtime_ns, mtime_ns))


def write_durable(path: Path, data: bytes, atime_ns: int = 0, mtime_ns: int = 0) -> None:
    """Create ``path`` (never replacing anything) with ``data``, the original's time stamps, fsync'd."""
    fd = os.open(path, CREATE_FLAGS, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        if mtime_ns:  # keep the original's time stamp (when the image was taken / exported)
            _set_times(fh.fileno(), path, atime_ns, mtime_ns)
        fsync_file(fh.fileno())


def copy_durable(source: Path | int, target: Path, atime_ns: int = 0, mtime_ns: int = 0) -> str | None:
    """Stream ``source`` (a path, or an open descriptor read from its start) into a new ``target``
    (fsync'd); the sha256 of what was copied, None if the source went away or failed to read."""
    own = not isinstance(source, int)
    try:
        src = open_input(source) if own else source
    except OSError:
        return None
    digest, offset = hashlib.sha256(), 0
    try:
        fd = os.open(target, CREATE_FLAGS, 0o644)
        with os.fdopen(fd, "wb") as fh:
            while True:
                try:
                    block = pread(src, 1 << 20, offset)
                except OSError:
                    return None
                if not block:
                    break
                offset += len(block)
                digest.update(block)
                fh.write(block)
            fh.flush()
            if mtime_ns:
                _set_times(fh.fileno(), target, atime_ns, mtime_ns)
            fsync_file(fh.fileno())
    finally:
        if own:
            os.close(src)
    return digest.hexdigest()




@dataclass(frozen=True)
class Identity:
    """Which file, in which state: equal identities mean the same inode, not written to since."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Identity":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @classmethod
    def at(cls, path: str | os.PathLike) -> "Identity | None":
        """The identity of what is at ``path`` now (not following symlinks); None if nothing is."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return cls.of(st) if stat.S_ISREG(st.st_mode) else None

    def same_inode(self, other: "Identity | None") -> bool:
        return other is not None and (self.dev, self.ino) == (other.dev, other.ino)

    def same_content_state(self, other: "Identity | None") -> bool:
        """Same inode, same size and mtime: nothing wrote to it (ctime aside, which a link changes)."""
        return self.same_inode(other) and (self.size, self.mtime_ns) == (other.size, other.mtime_ns)


