"""Pieces the backends share (pure Python, no OS calls of their own): the error for a file another
program holds, retry with backoff for transient errors, the no-hard-link rename fallback, and the
name rules of case-insensitive / Windows file systems."""

from __future__ import annotations

import errno
import os
import re
import time
import unicodedata
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class Busy(OSError):
    """Another program holds the file (open for writing, or locked by an antivirus or indexer)."""

    def __init__(self, path: str | os.PathLike = "", why: str = "in use by another program"):
        super().__init__(errno.EBUSY, why, os.fspath(path) if path else None)


class Moved(FileNotFoundError):
    """The classified file is no longer at the path it would be linked from (macOS, Windows: no /proc/self/fd)."""


#: waits between tries of an operation that failed transiently (antivirus scanners and search indexers
#: hold a new file for tens to hundreds of milliseconds); about 3 s in all, then the file is left and listed
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.5)


def retry_transient(op: Callable[..., T], *args: Any, is_transient: Callable[[OSError], bool],
                    delays: tuple[float, ...] | None = None, sleep: Callable[[float], None] | None = None) -> T:
    """``op(*args)``, tried again after each of ``delays`` while it fails with a transient error; the last
    error propagates (the caller leaves the file in place and reports it)."""
    for delay in (*(RETRY_DELAYS if delays is None else delays), None):
        try:
            return op(*args)
        except OSError as exc:
            if delay is None or not is_transient(exc):
                raise
        (sleep or time.sleep)(delay)
    raise AssertionError("unreachable")  # pragma: no cover


#: errno values meaning "this file system has no hard links" (FAT/exFAT EPERM, SMB ENOTSUP, link count)
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)


def rename_by_link(source: str | os.PathLike, target: str | os.PathLike, link: Callable[[Any, Any], None],
                   lexists: Callable[[Any], bool] = os.path.lexists,
                   rename: Callable[[Any, Any], None] = os.rename,
                   unlink: Callable[[Any], None] = os.unlink) -> None:
    """A no-replace rename where the kernel has none: link + unlink (the link fails if ``target`` exists);
    on file systems without hard links a checked rename, safe because dermsort holds the output lock."""
    try:
        link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        if lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", os.fspath(target)) from None
        rename(source, target)
        return
    unlink(source)


# ---------------------------------------------------------------- names on Windows and macOS
#: device names Windows reserves in every folder, with any extension (``CON.jpg`` is the console)
WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                              *(f"COM{c}" for c in "123456789¹²³"), *(f"LPT{c}" for c in "123456789¹²³")})
_WINDOWS_ILLEGAL = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def windows_name(name: str) -> str:
    """A name Windows stores as given: illegal characters -> '_', trailing dots and spaces (which Windows
    silently drops, so ``a.jpg.`` would land on ``a.jpg``) -> '_', a reserved device name gets a leading '_'."""
    name = _WINDOWS_ILLEGAL.sub("_", name)
    stripped = name.rstrip(". ")
    if stripped != name:
        name = stripped + "_" * (len(name) - len(stripped))
    if name.split(".", 1)[0].rstrip(" ").upper() in WINDOWS_RESERVED:
        name = "_" + name
    return name or "_"


def windows_unopenable(name: str) -> str | None:
    """Why Windows cannot open an input by this name (it exists on a card or share written elsewhere), or None:
    a device name (``CON.jpg`` opens the console) or a trailing dot/space (stripped: another file would open)."""
    if name.split(".", 1)[0].rstrip(" ").upper() in WINDOWS_RESERVED:
        return f"a Windows device name ({name.split('.', 1)[0]}): Windows opens the device, not this file; rename it"
    if name != name.rstrip(". "):
        return "ends in a dot or space, which Windows drops (it would open another file); rename it"
    if _WINDOWS_ILLEGAL.search(name):  # 'a:b.jpg' is the stream b.jpg of a file 'a' to Windows
        return "has a character Windows does not allow in a name (<>:\"/\\|?*); rename it"
    return None


def folded_key(relpath: str) -> str:
    """Names that one case-insensitive, normalisation-insensitive folder (NTFS, APFS, HFS+, exFAT) treats as
    one: ``Lesion.JPG`` = ``lesion.jpg``, NFC ``Ä`` (U+00C4) = NFD ``A`` + U+0308."""
    return unicodedata.normalize("NFC", relpath).casefold()


# ---------------------------------------------------------------- POSIX (Linux and macOS alike)
def posix_remove(path: str | os.PathLike) -> None:
    """Delete a file (``os.unlink``, looked up per call)."""
    os.unlink(path)


def posix_lock_exclusive(fd: int) -> None:
    """Take the output's one-writer lock; BlockingIOError when another process holds it."""
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def never_transient(exc: OSError) -> bool:
    """Whether an error may go away by itself in a moment (Windows: antivirus, indexers). Never on POSIX."""
    return False


def every_name_readable(name: str) -> str | None:
    """Why an input by this name cannot be read safely here: None, every name can (only '/' and NUL are illegal)."""
    return None
