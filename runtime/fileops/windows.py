"""The Windows backend of ``fileops`` (NTFS, ReFS, FAT/exFAT media, SMB shares).

- "still being written" and the classified bytes: an input is opened with ``CreateFileW`` sharing read
  and delete but **not write**. While any program has it open for writing that open fails with a
  sharing violation (WinError 32): the file is left for a later run. Once we hold it, nobody can open
  it for writing until we close it, so what we classified cannot change under us (stronger than
  Linux's lease, which makes a writer wait, and with one cost: a writer that tries during those
  seconds gets an error instead of waiting);
- no-replace rename: ``MoveFileExW`` without REPLACE_EXISTING (fails with WinError 80/183 when the
  target exists), with MOVEFILE_WRITE_THROUGH: it returns once the rename is on the disk;
- durable writes: ``FlushFileBuffers`` (``os.fsync``) for data. A directory cannot be fsync'd on
  Windows: ``fsync_dir`` does nothing; new names are made durable by NTFS's metadata journal and, for
  renames, by MOVEFILE_WRITE_THROUGH. A hard link (``CreateHardLinkW``) has no write-through flag:
  weaker than Linux, where the next step waits for the directory's fsync;
- the classified inode: ``GetFinalPathNameByHandleW`` gives the path of our open handle; it is linked
  only while that path still names the same file (volume serial + file index);
- transient errors: antivirus scanners and indexers open new files briefly, so WinError 5 and 32 on a
  rename, link or open are retried with backoff (``_shared.RETRY_DELAYS``, ~3 s), then the file is left
  in place and listed;
- names: NTFS is case-insensitive (``Lesion.JPG`` = ``lesion.jpg``), ``CON``, ``NUL``, ``COM1``... are
  devices in every folder, trailing dots and spaces are dropped (``portable_name``); paths longer than
  260 characters are given the ``\\\\?\\`` prefix in this module's own calls (``extended``).

This module imports on any system (ctypes and msvcrt are loaded lazily); the Windows calls go through
``OS``, which the contract tests replace by recorded behaviour.
"""

from __future__ import annotations

import errno
import ntpath
import os
import stat

from ._shared import Busy, Moved, folded_key, retry_transient, windows_name, windows_unopenable

NAME = "windows"
CASE_INSENSITIVE = True
_O_BINARY = getattr(os, "O_BINARY", 0x8000)
READ_FLAGS = os.O_RDONLY | _O_BINARY
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | getattr(os, "O_NOINHERIT", 0x80)

GENERIC_READ = 0x80000000
FILE_SHARE_READ, FILE_SHARE_DELETE = 0x1, 0x4
OPEN_EXISTING = 3
FILE_ATTRIBUTE_READONLY, FILE_ATTRIBUTE_NORMAL = 0x1, 0x80
FILE_FLAG_OPEN_REPARSE_POINT = 0x00200000
MOVEFILE_WRITE_THROUGH = 0x8
ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, ERROR_ACCESS_DENIED = 2, 3, 5
ERROR_NOT_SAME_DEVICE, ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION = 17, 32, 33
ERROR_INVALID_FUNCTION, ERROR_NOT_SUPPORTED, ERROR_FILE_EXISTS, ERROR_ALREADY_EXISTS = 1, 50, 80, 183
ERROR_TOO_MANY_LINKS = 1142
#: errors an antivirus scanner or indexer causes for a moment
TRANSIENT = (ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION)
#: longest path the plain Win32 API takes (MAX_PATH 260, its terminating NUL included)
MAX_PATH = 260


class _WinCalls:
    """The Windows API calls this backend makes (one place, so tests can replace them).
    Each returns a result and 0, or None and the Win32 error (GetLastError)."""

    def __init__(self) -> None:
        self._k32 = None

    @property
    def k32(self):
        if self._k32 is None:
            import ctypes
            from ctypes import wintypes

            k32 = ctypes.WinDLL("kernel32", use_last_error=True)
            k32.CreateFileW.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, ctypes.c_void_p,
                                        wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE]
            k32.CreateFileW.restype = wintypes.HANDLE
            k32.MoveFileExW.argtypes = [wintypes.LPCWSTR, wintypes.LPCWSTR, wintypes.DWORD]
            k32.MoveFileExW.restype = wintypes.BOOL
            k32.GetFinalPathNameByHandleW.argtypes = [wintypes.HANDLE, wintypes.LPWSTR, wintypes.DWORD,
                                                      wintypes.DWORD]
            k32.GetFinalPathNameByHandleW.restype = wintypes.DWORD
            k32.CloseHandle.argtypes = [wintypes.HANDLE]
            self._k32 = k32
        return self._k32

    def open_deny_write(self, path: str) -> tuple[int | None, int]:
        """A read handle that lets others read and delete, never write."""
        import ctypes

        handle = self.k32.CreateFileW(path, GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_DELETE, None,
                                      OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT, None)
        if handle is None or handle == ctypes.c_void_p(-1).value:
            return None, ctypes.get_last_error()
        return handle, 0

    def fd_of(self, handle: int) -> int:
        import msvcrt

        return msvcrt.open_osfhandle(handle, os.O_RDONLY)

    def close_handle(self, handle: int) -> None:
        self.k32.CloseHandle(handle)

    def move_file(self, source: str, target: str, flags: int) -> tuple[bool | None, int]:
        import ctypes

        if self.k32.MoveFileExW(source, target, flags):
            return True, 0
        return None, ctypes.get_last_error()

    def final_path(self, fd: int) -> tuple[str | None, int]:
        import ctypes
        import msvcrt

        buf = ctypes.create_unicode_buffer(32768)
        n = self.k32.GetFinalPathNameByHandleW(msvcrt.get_osfhandle(fd), buf, len(buf), 0)
        if n == 0 or n >= len(buf):
            return None, ctypes.get_last_error()
        return buf.value, 0

    link = staticmethod(os.link)
    unlink = staticmethod(os.unlink)
    chmod = staticmethod(os.chmod)
    lstat = staticmethod(os.lstat)
    fstat = staticmethod(os.fstat)
    stat = staticmethod(lambda path: os.stat(path, follow_symlinks=False))


OS = _WinCalls()


def _error(winerror: int, path: str, other: str | None = None) -> OSError:
    """The OSError Python raises for this Win32 error (its errno subclass), with ``winerror`` set."""
    if winerror in (ERROR_FILE_EXISTS, ERROR_ALREADY_EXISTS):
        exc: OSError = FileExistsError(errno.EEXIST, "File exists", path, None, other)
    elif winerror in (ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND):
        exc = FileNotFoundError(errno.ENOENT, "No such file or directory", path, None, other)
    elif winerror == ERROR_ACCESS_DENIED:
        exc = PermissionError(errno.EACCES, "Access is denied", path, None, other)
    elif winerror in (ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION):
        exc = PermissionError(errno.EACCES, "The file is being used by another process", path, None, other)
    elif winerror == ERROR_NOT_SAME_DEVICE:
        exc = OSError(errno.EXDEV, "Not the same device", path, None, other)
    elif winerror in (ERROR_INVALID_FUNCTION, ERROR_NOT_SUPPORTED):
        exc = OSError(errno.ENOTSUP, "Not supported by this file system", path, None, other)
    elif winerror == ERROR_TOO_MANY_LINKS:
        exc = OSError(errno.EMLINK, "Too many links", path, None, other)
    else:
        exc = OSError(errno.EIO, f"Windows error {winerror}", path, None, other)
    exc.winerror = winerror  # type: ignore[misc]  (read-only on Windows' own OSError; set here for the others)
    return exc


def _winerror(exc: OSError) -> int | None:
    return getattr(exc, "winerror", None)


def is_transient(exc: OSError) -> bool:
    return _winerror(exc) in TRANSIENT


def extended(path: str | os.PathLike) -> str:
    """``path`` as the Win32 API takes it beyond MAX_PATH: absolute, with the ``\\\\?\\`` prefix (which turns off
    the API's own name rewriting, so it is used only where a path needs it)."""
    path = os.fspath(path)
    if len(path) < MAX_PATH - 12 or path.startswith("\\\\?\\"):
        return path
    full = ntpath.normpath(ntpath.abspath(path)) if ntpath.isabs(path) or os.name == "nt" else path
    if full.startswith("\\\\"):
        return "\\\\?\\UNC\\" + full[2:]
    return "\\\\?\\" + full


def _plain(path: str) -> str:
    """A path from GetFinalPathNameByHandle without its ``\\\\?\\`` prefix (short enough ones only)."""
    if path.startswith("\\\\?\\UNC\\"):
        plain = "\\\\" + path[8:]
    elif path.startswith("\\\\?\\"):
        plain = path[4:]
    else:
        return path
    return plain if len(plain) < MAX_PATH - 12 else path


def pread(fd: int, size: int, offset: int) -> bytes:
    """Windows has no pread: seek and read (each descriptor is used by one thread at a time)."""
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def fsync_file(fd: int) -> None:
    """FlushFileBuffers. A descriptor we only read (a --move source linked into place) cannot be flushed on
    Windows (it needs write access, which our deny-write open shares with nobody, us included): nothing is
    done for it, so data its writer left in the cache is as durable as that writer made it."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EBADF) or _writable(fd):
            raise


def _writable(fd: int) -> bool:
    try:
        os.write(fd, b"")
    except OSError:
        return False
    return True


def fsync_dir(path: str | os.PathLike) -> None:
    """Not possible on Windows (a directory cannot be flushed); see the module doc."""


def open_input(path: str | os.PathLike) -> int:
    """A read-only descriptor that denies writers; ``Busy`` while a program has the file open for writing
    (or an antivirus holds it past the retries); ELOOP for a symbolic link or junction."""
    name = os.fspath(path)
    if stat.S_ISLNK(OS.lstat(extended(name)).st_mode):
        raise OSError(errno.ELOOP, "symbolic link", name)

    def attempt() -> int:
        handle, err = OS.open_deny_write(extended(name))
        if handle is None:
            raise _error(err, name)
        return handle

    try:
        handle = retry_transient(attempt, is_transient=is_transient)
    except PermissionError as exc:
        if _winerror(exc) in (ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION):
            raise Busy(name) from None
        raise
    try:
        return OS.fd_of(handle)
    except OSError:
        OS.close_handle(handle)
        raise


def link(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``CreateHardLinkW``: FileExistsError if ``target`` exists; ENOTSUP on FAT/exFAT (no hard links)."""

    def attempt() -> None:
        try:
            OS.link(extended(source), extended(target))
        except OSError as exc:
            err = _winerror(exc)
            if err is not None and not isinstance(exc, FileExistsError):
                raise _error(err, os.fspath(source), os.fspath(target)) from None
            raise

    retry_transient(attempt, is_transient=is_transient)


def link_open_file(fd: int, target: str | os.PathLike) -> None:
    """Link the file behind ``fd``: its path from GetFinalPathNameByHandle, used only while it names that file."""
    path, err = OS.final_path(fd)
    if path is None:
        raise _error(err, f"<fd {fd}>", os.fspath(target))
    path = _plain(path)
    here, ours = OS.stat(path), OS.fstat(fd)
    if (here.st_dev, here.st_ino) != (ours.st_dev, ours.st_ino):
        raise Moved(errno.ENOENT, "the classified file is no longer at its path", path)
    link(path, target)


def rename_no_replace(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """``MoveFileExW(MOVEFILE_WRITE_THROUGH)`` without REPLACE_EXISTING: never replaces, durable on return."""

    def attempt() -> None:
        done, err = OS.move_file(extended(source), extended(target), MOVEFILE_WRITE_THROUGH)
        if not done:
            raise _error(err, os.fspath(source), os.fspath(target))

    retry_transient(attempt, is_transient=is_transient)


def remove(path: str | os.PathLike) -> None:
    """Delete a file, through transient errors; a read-only one too (Windows refuses to delete a file with the
    read-only attribute, which Linux ignores; cameras and card readers set it): the attribute is cleared first."""

    def attempt() -> None:
        try:
            OS.unlink(extended(path))
        except PermissionError as exc:
            if not OS.lstat(extended(path)).st_file_attributes & FILE_ATTRIBUTE_READONLY:
                raise
            OS.chmod(extended(path), stat.S_IREAD | stat.S_IWRITE)
            try:
                OS.unlink(extended(path))
            except OSError:
                OS.chmod(extended(path), stat.S_IREAD)  # as it was
                raise exc from None

    retry_transient(attempt, is_transient=is_transient)


def lock_exclusive(fd: int) -> None:
    import msvcrt

    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        raise BlockingIOError(errno.EAGAIN, "locked by another process") from exc


def input_name_problem(name: str) -> str | None:
    return windows_unopenable(name)


def portable_name(name: str) -> str:
    return windows_name(name)


def name_key(relpath: str) -> str:
    return folded_key(relpath)


class WriteGuard:
    """Nothing to watch: the descriptor from ``open_input`` denies writers for as long as it is open."""

    def __init__(self, fd: int):
        self.fd = fd
        self.leased = True  # as strong as a lease that never breaks: nobody can write while we hold it
        self.method = "deny-write"

    def writer_present(self) -> bool:
        return False  # a writer would have made open_input fail (Busy)

    def intact(self) -> bool:
        return True

    def release(self) -> None:
        pass
