"""Placement: giving a classified image its name in benign/ or review/, and (``--move``) removing its source.

The promises, each checked right before the irreversible step it guards:

- **never overwrite**: a name is given with ``link`` (fails if the name exists) or, where a file
  system has no hard links, a rename after an existence check under the output lock;
- **what is placed is what was classified**: the staged copy is written from the bytes that were
  hashed (or our open descriptor of that inode) and read back and compared by sha256; a same-file-
  system move links the inode we opened (``/proc/self/fd``), never whatever the path holds now;
- **durable before irreversible**: intent -> link -> fsync(dir) -> done -> only then a source goes (the order
  is stated once, in ``journal.Journal.record``; every journal write here goes through it);
- **what is removed is what was classified**: the source is first renamed aside (atomically
  capturing whatever the name holds), its identity (device, inode, size, mtime; ctime before the
  rename) and sha256 compared with what was classified, and nobody may have opened it for writing
  (read lease); otherwise it is put back and kept;
- **a file still being written is never placed or removed** (see ``fileops.WriteGuard``).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .decision import BENIGN, REVIEW
from .errors import OutputError
from .fileops import Identity, copy_durable, fsync_dir, rename_no_replace, sha256_file, write_durable
from .faults import fault_point
from .records import Abort, Done, Intent, SourceRemoved

if TYPE_CHECKING:  # pragma: no cover
    from .journal import Journal
    from .reading import Decoded
    from .summary import SortSummary

log = logging.getLogger(__name__)

#: longest file name (bytes) on every common file system
NAME_MAX = 255
#: shorter limits some output file systems impose (eCryptfs 143, some SMB/NAS shares less)
_SHORTER_NAMES = (143, 100, 64, 40)
CAPTURE_TAG = ".dermsort-removing-"


class NotLinkable(Exception):
    """The source cannot be hard-linked into the output (other file system, no hard links): copy it."""


class SourceGone(Exception):
    """The source was deleted (by its owner) while being sorted."""


def capture_path(source: str | os.PathLike, rec_id: str) -> Path:
    """Where a source is renamed to while it is checked for removal (hidden, so never scanned)."""
    source = Path(source)
    return source.with_name(f".{source.name[:120]}{CAPTURE_TAG}{rec_id[:12]}")


class Placer:
    def __init__(self, out: Path, tmp_dir: Path, journal: "Journal", move: bool, keep_tree: bool = False):
        self.out, self.tmp_dir, self.move = out, tmp_dir, move
        #: every step is recorded with ``journal.record`` (its docstring states the order); its state is read only
        self.journal = journal
        #: mirror the input's subfolders inside benign/ and review/ (``--keep-tree``) instead of flattening
        self.keep_tree = keep_tree
        self._out_dev: int | None = None
        #: st_dev -> whether sources on it can be hard-linked into the output (learned on EXDEV/EPERM)
        self._linkable: dict[int, bool] = {}
        self._claimed: set[str] | None = None
        #: the longest name (bytes) the output file system accepted so far
        self.name_max = NAME_MAX

    # ------------------------------------------------------------------ one batch
    def place_batch(self, records: list[tuple["Decoded", Intent]], summary: "SortSummary") -> None:
        staged: list[tuple[Decoded, Intent, Path | None]] = []
        for d, rec in records:
            if d.skip:
                summary.leave(rec.file, d.skip)
                continue
            if d.writer_started():
                summary.leave(rec.file, "opened for writing by another program while being sorted; left for a later run")
                continue
            linkable = self.can_link_source(d)
            if d.unreadable and not linkable:
                summary.leave(rec.file, f"{rec.reason} (cannot copy)")
                continue
            tmp = None
            if not linkable:
                # copy mode, or a move across file systems: stage a verified copy inside OUT first
                tmp = self.stage_copy(d, rec)
                if tmp is None:
                    summary.leave(rec.file, "changed or unreadable while being sorted; left for a later run")
                    continue
            rec.dest = self.unique_dest(rec.decision, self._name(d, rec))
            staged.append((d, rec, tmp))
        if not staged:
            return
        # 1. intents are durable before any file appears in benign/ or review/
        self.journal.record(*(rec for _, rec, _ in staged))
        fault_point("intent")
        placed = []
        for d, rec, tmp in staged:
            result = self.link_into_place(d, rec, tmp, summary)
            if result is not None:
                placed.append((d, *result))
        # 2. the placed data (a linked source inode was never fsync'd by us: a camera may not have flushed it)
        # and the new names (and any new subfolders) are durable before the done records
        for d, rec, tmp in placed:
            if tmp is None and d.fd is not None:
                os.fsync(d.fd)
        for folder in sorted(self._folders([rec.dest for _, rec, _ in placed]), key=len, reverse=True):
            fsync_dir(self.out / folder)
        fault_point("dir_fsync")
        self.journal.record(*(Done(rec.id) for _, rec, _ in placed))
        fault_point("done")
        for d, rec, tmp in placed:
            summary.count(rec)
        # the journal deleted under us (output removed or unmounted): no source may go then
        if placed and not self.journal.still_linked():
            raise OutputError(f"the journal in {self.out} disappeared while sorting (output folder removed or "
                              "unmounted?); no source was removed; re-run")
        # 3. only now do the staging copies and (for --move) the sources go
        removed = []
        for d, rec, tmp in placed:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            if self.move and self.remove_source(d, rec, summary):
                removed.append(SourceRemoved(rec.id))
        self.journal.record(*removed, sync=False)

    # ------------------------------------------------------------------ staging and linking
    def stage_copy(self, d: "Decoded", rec: Intent) -> Path | None:
        """A durable, verified copy of exactly what was classified in OUT/.dermsort/tmp; None if unavailable."""
        if d.unreadable:
            return None
        tmp = self.tmp_dir / f"{rec.id}.part"
        tmp.unlink(missing_ok=True)
        if d.data is not None:
            write_durable(tmp, d.data, d.atime_ns, d.cand.mtime_ns)
        else:
            written = copy_durable(d.fd if d.fd is not None else d.cand.path, tmp, d.atime_ns, d.cand.mtime_ns)
            if written != d.sha256:
                tmp.unlink(missing_ok=True)
                return None
        fault_point("tmp_written")
        if sha256_file(tmp, drop_cache=True) != d.sha256:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"copy of {d.cand.path} did not verify (storage error?); source left in place")
        return tmp

    def link_into_place(self, d: "Decoded", rec: Intent, tmp: Path | None,
                        summary: "SortSummary") -> tuple[Intent, Path | None] | None:
        """Give the staged copy (or, for a same-fs move, the source's inode) its name in benign/ or review/.

        Returns the (possibly re-issued) record and the staging file, or None if it was rolled back.
        """
        for _ in range(12):
            dest = self.out / rec.dest
            try:
                if tmp is None and d.writer_started():
                    raise _Changed("opened for writing by another program while being sorted")
                linked = self.link_no_replace(tmp, dest) if tmp is not None else self._link_source(d, dest)
            except NotLinkable:
                if d.dev is not None:
                    self._linkable[d.dev] = False
                tmp = self.stage_copy(d, rec)
                if tmp is None:
                    return self._roll_back(rec, summary, "changed or unreadable while being sorted")
                continue
            except SourceGone:
                return self._roll_back(rec, summary, "vanished while being sorted (deleted by another program)")
            except _Changed as exc:
                return self._roll_back(rec, summary, str(exc))
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EILSEQ, errno.ENAMETOOLONG):
                    raise
                # a name this output file system refuses (FAT: ':' '?' '*'; a short NAME_MAX): a plain ASCII
                # name instead, and shorter ones while it is still refused as too long
                if exc.errno == errno.ENAMETOOLONG:
                    shorter = [n for n in _SHORTER_NAMES if n < len(os.fsencode(os.path.basename(rec.dest)))]
                    if not shorter:
                        break
                    self.name_max = shorter[0]
                rec = self.reissue(rec, d, "destination name not allowed here", safe=True)
                continue
            if not linked:
                # the name appeared since we chose it (put there by hand, a case-insensitive file system)
                rec = self.reissue(rec, d, "destination name taken")
                continue
            fault_point("link")
            if tmp is None and not self._placed_is_classified(d, dest):
                os.unlink(dest)  # our own second name of a source that changed: roll back
                return self._roll_back(rec, summary, "changed while being moved")
            return rec, tmp
        self.abort(rec, "no free destination name")
        summary.leave(rec.file, "no free name in the output")
        return None

    def _roll_back(self, rec: Intent, summary: "SortSummary", why: str) -> None:
        self.abort(rec, why)
        summary.leave(rec.file, f"{why}; left for a later run" if "vanished" not in why else why)
        return None

    def _link_source(self, d: "Decoded", dest: Path) -> bool:
        """--move on one file system: link the very inode that was classified (not what the path holds now)."""
        if d.fd is None:  # unreadable (no read permission): the path, checked against its identity
            if d.identity is None or Identity.at(d.cand.path) != d.identity:
                raise _Changed("changed while being sorted")
            return self.link_no_replace(d.cand.path, dest)
        try:
            os.link(f"/proc/self/fd/{d.fd}", dest, follow_symlinks=True)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:
            if os.fstat(d.fd).st_nlink == 0:
                raise SourceGone() from None
            raise
        except OSError as exc:
            if exc.errno == errno.EXDEV or exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise NotLinkable() from None
            raise

    def _placed_is_classified(self, d: "Decoded", dest: Path) -> bool:
        """The linked name holds the inode we classified, unwritten since (lease), or the same sha256."""
        placed = Identity.at(dest)
        if d.identity is None or not d.identity.same_content_state(placed):
            return False
        if d.writer_started():
            return False
        if d.guard is not None and d.guard.leased:
            return True
        return not d.sha256 or sha256_file(dest) == d.sha256

    def link_no_replace(self, source: Path, dest: Path) -> bool:
        staged = source.parent == self.tmp_dir
        try:
            os.link(source, dest, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:
            if not staged:
                raise SourceGone() from None
            raise
        except OSError as exc:
            if exc.errno == errno.EXDEV and not staged:
                raise NotLinkable() from None
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
        # file systems without hard links (exFAT, some SMB shares), or not allowed to link this source
        if not staged:
            raise NotLinkable()
        # we hold the output lock, so check-then-rename cannot race another dermsort
        if os.path.lexists(dest):
            return False
        os.rename(source, dest)
        return True

    def can_link_source(self, d: "Decoded") -> bool:
        """--move on one file system: the source itself is hard-linked into place (no copy)."""
        if not self.move:
            return False
        if self._out_dev is None:
            self._out_dev = os.stat(self.out).st_dev
        if d.dev is None:
            if d.identity is None:
                return False
            d.dev = d.identity.dev
        return self._linkable.get(d.dev, d.dev == self._out_dev)

    # ------------------------------------------------------------------ removing a source
    def remove_source(self, d: "Decoded", rec: Intent, summary: "SortSummary") -> bool:
        """Remove a sorted source, only if it is still exactly what was classified (see the module doc)."""
        source, dest = d.cand.path, self.out / rec.dest
        placed = Identity.at(dest)
        linked = d.identity is not None and d.identity.same_inode(placed)
        if placed is None:
            raise OutputError(f"{dest} vanished right after it was placed (output folder removed or unmounted?); "
                              f"{source} and the rest were left in place; re-run")
        held, before = capture_path(source, rec.id), Identity.at(source)
        try:
            os.rename(source, held)  # whatever the name holds now is ours to check; nobody can swap it any more
        except FileNotFoundError:
            summary.keep_source(str(source), "already gone (deleted by another program after it was sorted)")
            return False
        except OSError as exc:  # e.g. a write-protected card: the image is sorted, the source stays
            log.warning("could not remove %s after sorting it: %s", source, exc.strerror)
            summary.keep_source(str(source), f"could not remove it ({exc.strerror})")
            return False
        if not self._is_classified(d, before, held, linked, dest):
            put_back(held, source)
            if linked:
                self._detach(d, rec)
            log.warning("%s changed while being sorted; left in place (it will be sorted again)", source)
            summary.keep_source(str(source), "changed while being sorted")
            return False
        try:
            os.unlink(held)
        except OSError as exc:
            put_back(held, source)
            summary.keep_source(str(source), f"could not remove it ({exc.strerror})")
            return False
        if d.writer_started():
            # a writer opened it in the very instant of the unlink: it is writing into this inode now
            self._undo_unlink(d, rec, linked)
            summary.keep_source(str(source), "opened for writing while being removed; restored, it will be sorted "
                                "again")
            return False
        fault_point("unlink")
        return True

    def _is_classified(self, d: "Decoded", before: Identity | None, held: Path, linked: bool, dest: Path) -> bool:
        """The captured source is the inode that was classified, unwritten since (identity incl. ctime right
        before the capture, lease) and holds the classified bytes (sha256); a same-fs move's source is still
        the placed inode."""
        got = Identity.at(held)
        if d.identity is None or d.writer_started() or not d.identity.same_content_state(got):
            return False
        # our own link changed the inode's ctime (link count): then compare what a writer changes
        if not (d.identity.same_content_state(before) if linked else d.identity == before):
            return False
        if linked and not d.identity.same_inode(Identity.at(dest)):
            return False
        if d.sha256:
            try:
                return sha256_file(held) == d.sha256
            except OSError:
                return False
        return True

    def _detach(self, d: "Decoded", rec: Intent) -> None:
        """A same-fs move's placed file shares its inode with a source that a writer is about to change: give
        the placed name its own copy of the classified bytes (written while the lease still holds the writer)."""
        if d.fd is None and d.data is None:
            return
        tmp = self.tmp_dir / f"{rec.id}.detach.part"
        tmp.unlink(missing_ok=True)
        if d.data is not None:
            write_durable(tmp, d.data, d.atime_ns, d.cand.mtime_ns)
        elif copy_durable(d.fd, tmp, d.atime_ns, d.cand.mtime_ns) != d.sha256:
            tmp.unlink(missing_ok=True)
            return
        os.replace(tmp, self.out / rec.dest)  # our own file, same bytes: only its inode changes
        fsync_dir((self.out / rec.dest).parent)

    def _undo_unlink(self, d: "Decoded", rec: Intent, linked: bool) -> None:
        source = d.cand.path
        if linked:  # the inode is still named in OUT: name it in the input again, then detach the placed copy
            tmp = capture_path(source, rec.id + "r")
            os.link(self.out / rec.dest, tmp)
            put_back(tmp, source)
            self._detach(d, rec)
            return
        # the inode has no name left: let the writer finish into it, then save what it wrote under its name
        if d.guard is not None:
            d.guard.release()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and d.guard.writer_present():
                time.sleep(0.05)
            d.guard.release()
        tmp = source.with_name(f".{source.name[:120]}.dermsort-restored")
        tmp.unlink(missing_ok=True)
        copy_durable(d.fd, tmp)
        put_back(tmp, source)
        log.warning("%s was opened for writing while being removed; restored from the open descriptor", source)

    # ------------------------------------------------------------------ journal helpers and names
    def abort(self, rec: Intent, why: str) -> None:
        self.journal.record(Abort(rec.id, why))

    def reissue(self, rec: Intent, d: "Decoded", why: str, safe: bool = False) -> Intent:
        """Abort ``rec`` and journal the same placement under a fresh destination name."""
        self.abort(rec, why)
        sub, name = os.path.split(self._name(d, rec))
        if safe:
            name = "".join(c if (c.isascii() and (c.isalnum() or c in "-_. ")) else "_" for c in name)
        name = os.path.join(sub, name) if sub else name
        new = dataclasses.replace(rec, id=uuid.uuid4().hex, dest=self.unique_dest(rec.decision, name))
        self.journal.record(new)
        return new

    def _name(self, d: "Decoded", rec: Intent) -> str:
        """The file's name in its folder: the base name, or with --keep-tree its path below the input."""
        rel = rec.relpath or d.cand.path.name
        if self.keep_tree and os.sep in rel and not rel.startswith(".."):
            return rel
        return d.cand.path.name

    @staticmethod
    def _folders(dests: list[str]) -> set[str]:
        """benign/, review/ and every subfolder a placement in ``dests`` lives in."""
        folders = {BENIGN, REVIEW}
        for dest in dests:
            parent = os.path.dirname(dest)
            while parent and parent not in folders:
                folders.add(parent)
                parent = os.path.dirname(parent)
        return folders

    def unique_dest(self, decision: str, name: str) -> str:
        sub, name = os.path.split(name)
        if sub:  # --keep-tree: the subfolder exists (and is durable) before anything is linked into it
            folder = self.out / decision / sub
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                for parent in [folder, *folder.parents]:
                    if parent == self.out:
                        break
                    fsync_dir(parent.parent)
            decision = f"{decision}/{sub}"
        stem, ext = os.path.splitext(name.replace("\n", "_").replace("\r", "_"))
        if len(os.fsencode(ext)) > 16:
            stem, ext = stem + ext, ""
        if self._claimed is None:
            self._claimed = self.journal.state.claimed_dests()
        claimed = self._claimed
        n = 0
        while True:
            suffix = "" if n == 0 else f"__{n}"
            base = stem
            while len(os.fsencode(base + suffix + ext)) > self.name_max and base:
                base = base[:-1]  # keep the name within the limit, suffix included
            cand = f"{decision}/{base}{suffix}{ext}"
            if cand not in claimed and not os.path.lexists(self.out / cand):
                claimed.add(cand)  # names chosen earlier in this batch are taken too
                return cand
            n += 1


class _Changed(Exception):
    pass


def put_back(held: Path, source: Path) -> Path:
    """Return a captured source to its name; if that name was taken meanwhile, keep both (never replace)."""
    stem, ext = os.path.splitext(source.name)
    target, n = source, 0
    while True:
        try:
            rename_no_replace(held, target)
            return target
        except FileExistsError:
            n += 1
            target = source.with_name(f"{stem}__kept{n}{ext}")


def finish_capture(rec: Intent, out: Path) -> str | None:
    """Recovery of a source captured for removal when the run was killed: remove it if it is the
    placed image (same inode, or same sha256 as the destination), else put it back. Returns what was done."""
    held = capture_path(rec.file, rec.id)
    if not os.path.lexists(held):
        return None
    dest = out / rec.dest
    got, placed = Identity.at(held), Identity.at(dest)
    same = got is not None and got.same_inode(placed)
    if not same and got is not None and placed is not None and rec.sha256:
        try:
            same = sha256_file(held) == rec.sha256 == sha256_file(dest)
        except OSError:
            same = False
    if same:
        os.unlink(held)
        return "removed"
    put_back(held, Path(rec.file))
    return "put back"
