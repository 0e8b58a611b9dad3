"""Durable, identity-checked file operations: the one home of every low-level step the sorter's
promises rest on (hashing, fsync, never-replacing links, "is somebody still writing this file?").

- ``sha256_file``: the package's only file hasher (bundles, checkpoints, sorter).
- ``fsync_dir``: makes a directory entry durable (a new or removed name survives a power cut).
- ``write_durable`` / ``copy_durable``: write, keep the original time stamps, fsync.
- ``Identity``: (device, inode, ctime, size, mtime) of what was read and classified; compared with
  what is placed and what is removed right before each irreversible step. ctime cannot be set by
  a user program, so an in-place rewrite that restores size and mtime (``cp -p``, ``exiftool -P``,
  ``unzip -o``) still shows.
- ``WriteGuard``: whether another process has the file open for writing, and a read lease that
  makes such a process wait (and tells us) while we place the file. See docs/RELIABILITY.md
  ("writers still writing") for what each mechanism sees and where it cannot.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

#: read flags for untrusted input: never through a symlink, never blocking on a FIFO
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)


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
    while block := os.pread(fd, chunk, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes, atime_ns: int = 0, mtime_ns: int = 0) -> None:
    """Create ``path`` (never replacing anything) with ``data``, the original's time stamps, fsync'd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        if mtime_ns:  # keep the original's time stamp (when the image was taken / exported)
            os.utime(fh.fileno(), ns=(atime_ns or mtime_ns, mtime_ns))
        os.fsync(fh.fileno())


def copy_durable(source: Path | int, target: Path, atime_ns: int = 0, mtime_ns: int = 0) -> str | None:
    """Stream ``source`` (a path, or an open descriptor read from its start) into a new ``target``
    (fsync'd); the sha256 of what was copied, None if the source went away or failed to read."""
    own = not isinstance(source, int)
    try:
        src = os.open(source, READ_FLAGS) if own else source
    except OSError:
        return None
    digest, offset = hashlib.sha256(), 0
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        with os.fdopen(fd, "wb") as fh:
            while True:
                try:
                    block = os.pread(src, 1 << 20, offset)
                except OSError:
                    return None
                if not block:
                    break
                offset += len(block)
                digest.update(block)
                fh.write(block)
            fh.flush()
            if mtime_ns:
                os.utime(fh.fileno(), ns=(atime_ns or mtime_ns, mtime_ns))
            os.fsync(fh.fileno())
    finally:
        if own:
            os.close(src)
    return digest.hexdigest()


_RENAME_NOREPLACE = 1
_renameat2 = None


def rename_no_replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename that fails with FileExistsError instead of replacing ``target`` (renameat2 RENAME_NOREPLACE;
    where the kernel or file system lacks it, a hard link + unlink, or a checked rename under our lock)."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2 = fn
        except (OSError, AttributeError):
            _renameat2 = False
    if _renameat2:
        import ctypes

        AT_FDCWD = -100
        if _renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), os.fspath(target))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), os.fspath(source))
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", os.fspath(target)) from None
        os.rename(source, target)
        return
    os.unlink(source)


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


class WriteGuard:
    """Is another process writing a file, and does it start to while we hold it?

    1. a read lease (``fcntl(F_SETLEASE, F_RDLCK)``) on our read-only descriptor: refused while any
       process has the file open for writing; once held, a process that opens the file for writing
       (or truncates it) is made to wait (up to /proc/sys/fs/lease-break-time, 45 s) and the lease
       shows as breaking, so ``intact`` turns False. Leases need the file's owner or CAP_LEASE (root)
       and a local file system; where they are refused (EACCES, EINVAL: NFS, SMB, FUSE) we fall back to
    2. /proc/*/fd: descriptors open for writing on the same inode, in every process we may inspect
       (all as root; as a service user only its own processes and those of its own uid).
    The lease never sends us a signal (F_SETOWN 0), so no handler is needed in any thread.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.leased = False
        self.method = "none"

    def writer_present(self) -> bool:
        """Take the lease; True when a process has the file open for writing right now."""
        try:
            fcntl.fcntl(self.fd, _F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                self.method = "lease"
                return True
            self.method = "proc"  # no lease here: look at the descriptors we are allowed to see
            st = os.fstat(self.fd)
            return (st.st_dev, st.st_ino) in open_for_writing()
        self.leased, self.method = True, "lease"
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETOWN, 0)  # a lease break must not kill us with SIGIO
        except OSError:
            pass
        return False

    def intact(self) -> bool:
        """False once somebody started to open the file for writing since ``writer_present``."""
        if self.leased:
            try:
                return fcntl.fcntl(self.fd, _F_GETLEASE) == fcntl.F_RDLCK
            except OSError:
                return False
        if self.method == "proc":
            st = os.fstat(self.fd)
            return (st.st_dev, st.st_ino) not in open_for_writing()
        return True

    def release(self) -> None:
        if self.leased:
            try:
                fcntl.fcntl(self.fd, _F_SETLEASE, fcntl.F_UNLCK)
            except OSError:
                pass
            self.leased = False


_scan_cache: tuple[float, set[tuple[int, int]]] = (0.0, set())
#: how long one /proc scan is reused (a scan costs ~1 ms per 100 descriptors; files come in batches)
PROC_SCAN_TTL = 0.2


def open_for_writing() -> set[tuple[int, int]]:
    """(device, inode) of regular files that some visible process has open for writing (cached briefly)."""
    global _scan_cache
    now = time.monotonic()
    if now - _scan_cache[0] < PROC_SCAN_TTL:
        return _scan_cache[1]
    found = _scan_proc()
    _scan_cache = (time.monotonic(), found)
    return found


def _scan_proc() -> set[tuple[int, int]]:
    found: set[tuple[int, int]] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or another user's process we may not inspect
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                    flags = next((int(line.split()[1], 8) for line in fh if line.startswith("flags:")), 0)
                if flags & (os.O_WRONLY | os.O_RDWR) == 0:
                    continue
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except (OSError, ValueError):
                continue
            if stat.S_ISREG(st.st_mode):
                found.add((st.st_dev, st.st_ino))
    return found
