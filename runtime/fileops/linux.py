"""The Linux backend of ``fileops`` (also used on other POSIX systems that are not macOS).

The strongest of the three: read leases (``F_SETLEASE``) and ``/proc/*/fd`` see writers,
``/proc/self/fd/N`` links the very inode that was classified, ``renameat2(RENAME_NOREPLACE)`` never
replaces, and fsync of a directory makes a new name durable. What each promise means on the other
systems: docs/RELIABILITY.md ("Per operating system").
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from ._shared import every_name_readable as input_name_problem  # noqa: F401 - the contract
from ._shared import never_transient as is_transient  # noqa: F401
from ._shared import posix_lock_exclusive as lock_exclusive  # noqa: F401
from ._shared import posix_remove as remove  # noqa: F401
from ._shared import rename_by_link

NAME = "linux"
#: names differ by case and Unicode form here (ext4, xfs, btrfs); a vfat/exFAT output still refuses a
#: clash at link time (EEXIST), which placement answers with another name
CASE_INSENSITIVE = False
#: read flags for untrusted input: never through a symlink, never blocking on a FIFO
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
#: create flags for a file we write (never replacing one)
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)

def pread(fd: int, size: int, offset: int) -> bytes:
    return os.pread(fd, size, offset)  # looked up per call: fault-injection tests replace os.pread / os.fsync


def fsync_file(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_input(path: str | os.PathLike) -> int:
    """A read-only descriptor of an input file (never through a symlink: ELOOP; never blocking on a FIFO)."""
    return os.open(path, READ_FLAGS)


def link(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """A second name for ``source`` (not following a symlink); FileExistsError if ``target`` exists."""
    os.link(source, target, follow_symlinks=False)


def link_open_file(fd: int, target: str | os.PathLike) -> None:
    """Name the inode behind ``fd`` (not whatever its path holds now) ``target``; FileExistsError if taken."""
    os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)


def portable_name(name: str) -> str:
    """The name a file gets in the output: unchanged here (only '/' and NUL are illegal, never in a name)."""
    return name


def name_key(relpath: str) -> str:
    """What two names must differ in to be two files: everything (case and Unicode form included)."""
    return relpath


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
    rename_by_link(source, target, link)


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
