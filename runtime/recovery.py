"""Recovery: what the next run does with what a killed run, or a damaged journal, left behind.

1. ``recover_pending``: every intent without done/abort is finished if its destination holds the
   recorded sha256 (never trusted without checking it), else rolled back; a --move source that was
   renamed aside for its removal check is removed (it is the placed image) or put back.
2. ``reconcile``: files in benign/ and review/ that no finished journal record accounts for (the
   journal was cut, deleted or has garbage lines) are recorded again: each is hashed and classified
   by the model that runs now; one in benign/ that the model would not send to benign/ now (or that
   cannot be scored) is moved to review/. Its input, if seen again, is matched by sha256 instead of
   being sorted a second time (``claim``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .decision import BENIGN, REVIEW
from .faults import fault_point
from .fileops import Identity, fsync_dir, sha256_file
from .placement import finish_capture
from .records import Abort, Claim, Done, Intent, SourceRemoved

if TYPE_CHECKING:  # pragma: no cover
    from .journal import Journal, JournalState
    from .placement import Placer

log = logging.getLogger(__name__)


def placement_complete(rec: Intent, out: Path) -> bool:
    if not rec.dest:
        return False
    try:
        st = os.stat(out / rec.dest, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return False
        if rec.relocated_from:  # moved within OUT by reconcile: the same inode under both names
            origin = out / rec.relocated_from
            if os.path.lexists(origin):
                return os.path.samestat(st, os.stat(origin, follow_symlinks=False))
        if not rec.sha256:  # an unreadable file moved by hard link: the source is the same inode
            return os.path.samestat(st, os.stat(rec.file, follow_symlinks=False))
        return sha256_file(out / rec.dest) == rec.sha256
    except OSError:
        return False


def _unlink_own_partial_link(rec: Intent, out: Path) -> None:
    """A --move link whose source changed before the check: the dest is our second name of the source."""
    if not rec.dest or rec.mode != "move" or not rec.file:
        return
    dest = out / rec.dest
    try:
        if os.path.samestat(os.stat(dest, follow_symlinks=False), os.stat(rec.file, follow_symlinks=False)):
            os.unlink(dest)
    except OSError:
        pass


def recover_pending(journal: Journal, out: Path) -> int:
    """Finish or roll back placements a killed run left between intent and done. Returns #finished."""
    finished: list[Done] = []
    aborted: list[Abort] = []
    for rec in journal.state.pending():
        if placement_complete(rec, out):
            finished.append(Done(rec.id, recovered=True))
        else:
            _unlink_own_partial_link(rec, out)
            aborted.append(Abort(rec.id, "placement did not complete"))
    journal.record(*finished, *aborted)
    fault_point("recovered")
    state = journal.state
    _finish_relocations(state, out)
    # --move sources renamed aside for their removal check when the run was killed
    removed = []
    for rid in state.done - state.completed_moves:
        rec = state.intents[rid]
        if rec.mode != "move" or not rec.file:
            continue
        if finish_capture(rec, out) == "removed":
            removed.append(SourceRemoved(rid))
        elif not os.path.lexists(rec.file) and os.path.isdir(os.path.dirname(rec.file)):
            # its source_removed record was lost (torn tail cut) or its owner deleted it: the input folder is
            # there and the source is not, so it is not "kept" (an unmounted card has no folder: left alone)
            removed.append(SourceRemoved(rid, observed=True))
    journal.record(*removed)
    return len(finished)


def _finish_relocations(state: JournalState, out: Path) -> None:
    """A file moved benign/ -> review/ by reconcile whose old name was not yet removed."""
    for rid in state.done:
        rec = state.intents[rid]
        origin = rec.relocated_from
        if origin and os.path.lexists(out / origin):
            try:
                if os.path.samestat(os.stat(out / origin, follow_symlinks=False),
                                    os.stat(out / rec.dest, follow_symlinks=False)):
                    os.unlink(out / origin)
            except OSError:
                pass


def unaccounted(state: JournalState, out: Path) -> list[str]:
    """Files in benign/ and review/ (relative to OUT) that no finished placement accounts for."""
    known = {state.intents[i].dest for i in state.done if state.intents[i].dest}
    found = []
    stack = [BENIGN, REVIEW]  # subfolders too (--keep-tree)
    while stack:
        sub = stack.pop()
        try:
            entries = sorted(os.scandir(out / sub), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = f"{sub}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                stack.append(rel)
            elif rel not in known and entry.is_file(follow_symlinks=False):
                found.append(rel)
    return sorted(found)


def reconcile(journal: Journal, out: Path, placer: Placer,
              classify: Callable[[list[Path]], list[tuple[Any, Intent]]]) -> int:
    """Record every file in benign/ and review/ that the journal does not account for. Returns how many.

    ``classify`` turns paths into (Decoded, intent record) pairs exactly as the sorter would for an input.
    """
    orphans = unaccounted(journal.state, out)
    if not orphans:
        return 0
    recorded = 0
    for start in range(0, len(orphans), 16):
        chunk = orphans[start:start + 16]
        for (d, rec), rel in zip(classify([out / r for r in chunk]), chunk):
            try:
                recorded += _record_orphan(journal, out, placer, d, rec, rel)
            finally:
                d.close()
    return recorded


def _record_orphan(journal: Journal, out: Path, placer: Placer, d: Any, rec: Intent, rel: str) -> int:
    if d.skip or d.identity is None:
        return 0  # vanished or unreadable right now: looked at again on the next start
    folder = rel.split("/", 1)[0]
    rec = dataclasses.replace(rec, file="", relpath="", recovered_from_output=True, dest=rel,
                              reason=f"found in OUT without a journal record; {rec.reason}")
    if folder == BENIGN and rec.decision != BENIGN:
        # never leave an image in benign/ that the model, now, would not put there: move it to review/
        new = placer.unique_dest(REVIEW, rel.split("/", 1)[1])  # same place below review/
        rec = dataclasses.replace(rec, dest=new, relocated_from=rel, decision=REVIEW)
        journal.record(rec)
        os.link(out / rel, out / new, follow_symlinks=False)
        fsync_dir((out / new).parent)
        journal.record(Done(rec.id))
        old = Identity.at(out / rel)
        if old is not None and old.same_inode(Identity.at(out / new)):
            os.unlink(out / rel)
            fsync_dir((out / rel).parent)
        return 1
    rec.decision = folder  # a file in review/ stays there whatever the model says now (review is safe)
    journal.record(rec, Done(rec.id))
    return 1


def claim_record(rec_id: str, d: Any, input_dir: Path) -> Claim:
    """The journal record that makes input ``d`` the source of placement ``rec_id`` (recovered from OUT)."""
    return Claim(rec_id, str(d.cand.path), relpath=os.path.relpath(d.cand.path, input_dir), size=d.cand.size,
                 mtime_ns=d.cand.mtime_ns, ino=d.cand.ino, ctime_ns=d.cand.ctime_ns)
