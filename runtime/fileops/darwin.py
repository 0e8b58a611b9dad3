"""The macOS backend of ``fileops`` (APFS, HFS+, and FAT/exFAT/SMB media mounted on a Mac).

- no-replace rename: ``renamex_np(RENAME_EXCL)``; where the file system answers ENOTSUP (FAT, exFAT,
  some SMB shares), link + unlink, and where there are no hard links either, a rename after an
  existence check under the output lock (``_shared.rename_by_link``);
- durable writes: ``fcntl(F_FULLFSYNC)``: plain fsync leaves the data in the drive's cache on macOS;
- the classified inode: ``fcntl(F_GETPATH)`` gives our descriptor's current path, whose identity is
  compared with the descriptor's before it is linked (placement then checks the placed name again);
- "still being written" (weaker than Linux: macOS has no leases and no /proc): a file whose size,
  mtime or ctime changed within ``QUIET_S`` is taken as being written, and one that changes while we
  hold it is seen through fstat. A writer that holds the file open but has written nothing for
  ``QUIET_S`` is not seen, and a writer that starts while we place it is not made to wait;
- names: APFS and HFS+ are case-insensitive by default and normalisation-insensitive (HFS+ stores NFD),
  so ``Lesion.JPG`` / ``lesion.jpg`` and NFC / NFD ``Ä`` are one name (``name_key``).

This module imports on any system; the macOS calls go through ``OS`` (created lazily), which the
contract tests replace by recorded behaviour.
"""

from __future__ import annotations

import errno
import os
import time
import unicodedata

from ._shared import every_name_readable as input_name_problem  # noqa: F401 - the contract
from ._shared import never_transient as is_transient  # noqa: F401
from ._shared import posix_lock_exclusive as lock_exclusive  # noqa: F401
from ._shared import posix_remove as remove  # noqa: F401
from ._shared import Moved, folded_key, rename_by_link

NAME = "darwin"
CASE_INSENSITIVE = True
READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
#: <sys/fcntl.h>
F_GETPATH, F_FULLFSYNC = 50, 51
RENAME_EXCL = 0x00000004
MAXPATHLEN = 1024
#: a file changed more recently than this is taken as still being written
QUIET_S = 2.0

def pread(fd: int, size: int, offset: int) -> bytes:
    return os.pread(fd, size, offset)


class _MacCalls:
    """The macOS system calls this backend makes (one place, so tests can replace them)."""

    def __init__(self) -> None:
        self._renamex_np = None

    def fcntl(self, fd: int, cmd: int, arg: int | bytes = 0) -> int | bytes:
        import fcntl

        return fcntl.fcntl(fd, cmd, arg)

    def renamex_np(self, source: bytes, target: bytes, flags: int) -> int:
        """0, or the errno of ``renamex_np(2)``."""
        import ctypes

        if self._renamex_np is None:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renamex_np
            fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
            self._renamex_np = fn
        if self._renamex_np(source, target, flags) == 0:
            return 0
        return ctypes.get_errno()

    link = staticmethod(lambda source, target: os.link(source, target, follow_symlinks=False))
    lexists = staticmethod(os.path.lexists)
    rename = staticmethod(os.rename)
    unlink = staticmethod(os.unlink)
    fstat = staticmethod(os.fstat)
    stat = staticmethod(lambda path: os.stat(path, follow_symlinks=False))
    fsync = staticmethod(os.fsync)


OS = _MacCalls()


def fsync_file(fd: int) -> None:
    """Data on the medium, not in the drive's write cache (F_FULLFSYNC; fsync where the file system lacks it)."""
    try:
        OS.fcntl(fd, F_FULLFSYNC)
    except OSError:
        OS.fsync(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fsync_file(fd)
    finally:
        os.close(fd)


def open_input(path: str | os.PathLike) -> int:
    return os.open(path, READ_FLAGS)


def link(source: str | os.PathLike, target: str | os.PathLike) -> None:
    OS.link(source, target)


def link_open_file(fd: int, target: str | os.PathLike) -> None:
    """Link the file behind ``fd``: its path from F_GETPATH, used only while it still names that inode."""
    raw = OS.fcntl(fd, F_GETPATH, bytes(MAXPATHLEN))
    path = os.fsdecode(raw.split(b"\0", 1)[0])
    here, ours = OS.stat(path), OS.fstat(fd)
    if (here.st_dev, here.st_ino) != (ours.st_dev, ours.st_ino):
        raise Moved(errno.ENOENT, "the classified file is no longer at its path", path)
    OS.link(path, target)


def rename_no_replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename that fails with FileExistsError instead of replacing ``target``."""
    err = OS.renamex_np(os.fsencode(source), os.fsencode(target), RENAME_EXCL)
    if err == 0:
        return
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), os.fspath(target))
    if err not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        raise OSError(err, os.strerror(err), os.fspath(source))
    rename_by_link(source, target, OS.link, OS.lexists, OS.rename, OS.unlink)


def portable_name(name: str) -> str:
    """One Unicode form (NFC) for every name we give, so results.csv and the journal say what Finder shows."""
    return unicodedata.normalize("NFC", name)


def name_key(relpath: str) -> str:
    return folded_key(relpath)


class WriteGuard:
    """Size/mtime/ctime quiescence (macOS has neither leases nor /proc): see the module doc for what it misses."""

    def __init__(self, fd: int, clock=time.time):
        self.fd = fd
        self.leased = False  # nothing holds a writer off: placement re-checks the bytes by sha256
        self.method = "quiescence"
        self._clock = clock
        self._seen: tuple[int, int, int] | None = None

    def _state(self) -> tuple[int, int, int]:
        st = OS.fstat(self.fd)
        return st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def writer_present(self) -> bool:
        self._seen = self._state()
        newest = max(self._seen[1], self._seen[2]) / 1e9
        return self._clock() - newest < QUIET_S

    def intact(self) -> bool:
        # size and mtime only: our own link into the output changes the ctime (link count)
        return self._seen is None or self._state()[:2] == self._seen[:2]

    def release(self) -> None:
        pass
