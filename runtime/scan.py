"""Finding the input: which files of a folder are candidates, and which folders may be used.

Symlinks are never followed; hidden files, files an OS or a camera leaves beside images, and
temporary names of a writer that is not done yet (``photo.jpg.part``, ``.crdownload``, ``~$x``) are
never taken, but counted, so the summary can say what was not sorted and why.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DermsortError, OutputError
from .fileops import input_name_problem

#: files an OS or a camera leaves beside images; never images, never moved
IGNORED_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}
#: names a writer uses until the file is complete (it renames it when done): taken after the rename
PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".temp", ".filepart", "~")
PARTIAL_PREFIXES = ("~$", ".~")
#: how many entries of subfolders are looked at to count what --recursive would add
_SUBFOLDER_COUNT_LIMIT = 100_000


@dataclass
class Candidate:
    path: Path
    size: int
    mtime_ns: int
    #: inode and ctime when scanned (0: unknown); a same-size, same-mtime replacement changes them
    ino: int = 0
    ctime_ns: int = 0


@dataclass
class ScanNotes:
    """What a scan saw but did not take."""

    #: files in subfolders, not sorted because --recursive was not given
    in_subfolders: int = 0
    #: hidden files (name starts with '.'), never sorted
    hidden: int = 0
    #: symlinks, special files, unreadable folders, temporary names: file and reason
    ignored: list[dict[str, str]] = field(default_factory=list)


def is_partial_name(name: str) -> bool:
    low = name.lower()
    return low.endswith(PARTIAL_SUFFIXES) or low.startswith(PARTIAL_PREFIXES)


def scan(root: Path, recursive: bool, ignored: list[dict[str, str]] | None = None,
         notes: ScanNotes | None = None) -> list[Candidate]:
    """Regular files under ``root`` in a stable order. Symlinks are never followed."""
    found: list[Candidate] = []
    stack = [root]
    if notes is not None and ignored is None:
        ignored = notes.ignored
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            if ignored is not None:
                ignored.append({"file": str(folder), "reason": f"folder not readable ({exc.strerror})"})
            continue
        for entry in entries:
            if entry.name.startswith(".") and not entry.name.startswith(PARTIAL_PREFIXES):
                if notes is not None and entry.name.lower() not in IGNORED_NAMES and entry.name != ".dermsort":
                    notes.hidden += 1
                continue
            if entry.name.lower() in IGNORED_NAMES:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                if ignored is not None:
                    ignored.append({"file": entry.path, "reason": "symbolic link (not followed)"})
            elif stat.S_ISDIR(st.st_mode):
                if recursive:
                    stack.append(Path(entry.path))
                elif notes is not None:
                    notes.in_subfolders += _count_files(Path(entry.path))
            elif stat.S_ISREG(st.st_mode):
                if is_partial_name(entry.name):
                    if ignored is not None:
                        ignored.append({"file": entry.path, "reason": "temporary name of a file still being "
                                        "written; it is sorted once renamed"})
                    continue
                problem = input_name_problem(entry.name)
                if problem:  # Windows: CON.jpg, "mole.jpg." from a card written elsewhere
                    if ignored is not None:
                        ignored.append({"file": entry.path, "reason": problem})
                    continue
                found.append(Candidate(Path(entry.path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
            elif ignored is not None:
                ignored.append({"file": entry.path, "reason": "not a regular file"})
    found.sort(key=lambda c: str(c.path))
    return found


def _count_files(folder: Path) -> int:
    """Visible regular files below ``folder`` (what --recursive would consider), bounded."""
    count, seen, stack = 0, 0, [folder]
    while stack and seen < _SUBFOLDER_COUNT_LIMIT:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            seen += 1
            if entry.name.startswith(".") or entry.name.lower() in IGNORED_NAMES:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) and not is_partial_name(entry.name):
                    count += 1
            except OSError:
                continue
    return count


def _existing_chain(path: Path) -> list[os.stat_result]:
    """stat of ``path`` (if it exists) and of each of its existing parents."""
    chain = []
    for p in (path, *path.parents):
        try:
            chain.append(os.stat(p))
        except OSError:
            continue
    return chain


def check_folders(input_dir: Path, out: Path) -> tuple[Path, Path]:
    """Resolve and validate the input and output folders; one-line errors for the CLI.

    Nesting is checked by device and inode, not by path, so an output that is the input (or inside
    it) through a bind mount or a second mount of the same file system is caught too.
    """
    if not input_dir.exists():
        raise DermsortError(f"input folder not found: {input_dir}")
    if not input_dir.is_dir():
        raise DermsortError(f"input is not a folder: {input_dir}")
    src, dst = input_dir.resolve(), out.resolve()
    src_st = os.stat(src)
    if dst == src or src in dst.parents or any(os.path.samestat(s, src_st) for s in _existing_chain(dst)):
        raise OutputError(f"output folder {out} is inside the input folder {input_dir}; choose an output outside it")
    try:
        dst_st = os.stat(dst)
    except OSError:
        dst_st = None
    if dst in src.parents or (dst_st is not None and any(os.path.samestat(s, dst_st) for s in _existing_chain(src))):
        raise OutputError(f"input folder {input_dir} is inside the output folder {out}; choose another output")
    return src, dst


def default_out(input_dir: Path) -> Path:
    resolved = input_dir.resolve()
    return resolved.parent / f"{resolved.name}-sorted"
