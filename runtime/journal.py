"""The results journal: an append-only JSON-lines file that is the sorter's source of truth, and its state.

``Journal.record`` is the one way the state changes: it makes records durable, then folds them in; its
docstring states the crash-safety order (durable before irreversible) that placement and recovery follow.
Records are written with ``os.write`` on an ``O_APPEND`` descriptor and fsync'd. A run killed at any point
leaves a journal from which the next run finishes or rolls back every placement; a torn last line (killed
mid-write) is cut off by the next writer, and a write that fails (disk full) is rolled back at once, so the
journal never holds half a record. The records' fields: ``records.py``; results.csv, a view of the state:
``results_csv.py``.

File names that are not valid UTF-8 (``os.fsdecode`` gives lone surrogates) are stored with JSON
``\\udcXX`` escapes, so they round-trip exactly and the journal stays valid UTF-8.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .faults import fault_armed
from .records import Abort, Claim, Done, Event, Intent, SourceRemoved, is_record, parse


@dataclass
class JournalState:
    """Placements folded from the journal: id -> intent, and which are finished. Changed only by ``Journal``
    (``read`` folds the file, ``record`` folds what it has just made durable); everyone else reads it."""

    intents: dict[str, Intent] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    aborted: set[str] = field(default_factory=set)
    completed_moves: set[str] = field(default_factory=set)
    #: source path -> id of its latest finished placement
    by_source: dict[str, str] = field(default_factory=dict)
    #: lines that were not journal records (damage: garbage, a cut in the middle); counted for a warning
    bad_lines: int = 0
    #: bytes cut from a torn last line
    torn_bytes: int = 0

    def pending(self) -> list[Intent]:
        return [r for i, r in self.intents.items() if i not in self.done and i not in self.aborted]

    def finished(self) -> list[Intent]:
        return [self.intents[i] for i in self.intents if i in self.done]

    def claimed_dests(self) -> set[str]:
        return {r.dest for i, r in self.intents.items() if i not in self.aborted and r.dest}

    def unclaimed_recovered(self) -> dict[str, str]:
        """sha256 -> id of files found in OUT without a journal record whose input was not seen yet."""
        return {r.sha256: i for i, r in self.intents.items()
                if i in self.done and r.recovered_from_output and not r.file and r.sha256}

    def sorted_elsewhere(self) -> dict[str, str]:
        """sha256 -> id of finished placements whose input is no longer where it was recorded and was not
        removed by dermsort (renamed or moved by its owner, the input folder renamed): an input with those
        bytes is that image under another name, not a new one."""
        found: dict[str, str] = {}
        for rid in self.done:
            rec = self.intents[rid]
            if rid in self.completed_moves or not rec.sha256 or not rec.file:
                continue
            if self.by_source.get(rec.file) != rid or rec.sha256 in found:
                continue  # superseded by a later placement of that name
            if not os.path.lexists(rec.file):
                found[rec.sha256] = rid
        return found


def _fold(state: JournalState, event: Event) -> None:
    """What one durable record changes in the state (the only code that changes it)."""
    rid = event.id
    if isinstance(event, Intent):
        state.intents[rid] = event
    elif isinstance(event, Done) and rid in state.intents:
        state.done.add(rid)
        if state.intents[rid].file:  # a file recovered from OUT has no source (yet)
            state.by_source[state.intents[rid].file] = rid
    elif isinstance(event, Abort):
        state.aborted.add(rid)
    elif isinstance(event, SourceRemoved):
        state.completed_moves.add(rid)
    elif isinstance(event, Claim) and rid in state.intents:
        # the input of a placement recovered from OUT was seen again: it is that placement's source
        for name in event.present:
            setattr(state.intents[rid], name, getattr(event, name))
        if rid in state.done:
            state.by_source[event.file] = rid


def _dumps(rec: dict[str, Any]) -> str:
    line = json.dumps(rec, ensure_ascii=False, sort_keys=True)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: escape it (json.loads gives it back)
        line = json.dumps(rec, ensure_ascii=True, sort_keys=True)
    return line + "\n"


class Journal:
    """The journal file and the state folded from it: ``read`` at start, then ``record`` for every event."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        #: what the journal says now (``read`` replaces it; ``record`` adds to it)
        self.state = JournalState()

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def read(self, repair: bool = True) -> JournalState:
        """Fold the journal into ``state`` (and return it). ``repair`` cuts a torn last line; only the lock
        holder may do that."""
        state = self.state = JournalState()
        if not self.path.exists():
            return state
        with open(self.path, "rb") as fh:
            data = fh.read()
        end = data.rfind(b"\n") + 1
        state.torn_bytes = len(data) - end
        if end < len(data) and repair:
            # torn tail from a kill mid-write: that record was never acknowledged, so it never happened
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8", "surrogateescape"))
            except ValueError:
                state.bad_lines += 1
                continue
            if not is_record(rec):
                state.bad_lines += 1
                continue
            event = parse(rec)  # None: an event this version does not know (a newer dermsort's)
            if event is not None:
                _fold(state, event)
        return state

    def drop_bad_lines(self) -> Path | None:
        """Rewrite the journal without lines that are not records (garbage, a cut in the middle), atomically;
        the damaged original is kept beside it for inspection. Only the lock holder, before ``open``."""
        data = self.path.read_bytes()
        good = []
        for line in data.splitlines(keepends=True):
            try:
                rec = json.loads(line.decode("utf-8", "surrogateescape"))
            except ValueError:
                continue
            if is_record(rec) and line.endswith(b"\n"):
                good.append(line)
        kept = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        os.link(self.path, kept)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(good))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return kept

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if created:  # the journal's own name must survive a power cut, like the files it describes
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def record(self, *events: Event, sync: bool = True) -> None:
        """Make ``events`` durable in the journal, then fold them into ``state``: the only way the state changes.

        **Durable before irreversible** -- the crash-safety rule, as the order of these calls around the
        file-system steps (``placement.Placer.place_batch`` follows it step by step):

        1. ``Intent`` is durable before its file appears in benign/ or review/ (link, or rename of a staged,
           fsync'd and verified copy);
        2. the placed data and its directory entry are fsync'd, and only then is ``Done`` recorded;
        3. only after ``Done`` is durable does anything irreversible happen to the input: a ``--move`` source
           is removed (after its identity and sha256 are checked again), then ``SourceRemoved`` is recorded
           (``sync=False``: one lost in a crash is observed again by recovery).

        A placement that cannot finish is rolled back and gets an ``Abort``. A run killed anywhere leaves
        intents without done/abort, which the next run's recovery (``recovery.recover_pending``) finishes if
        the destination holds the recorded sha256, else rolls back. All or nothing: a write that fails (disk
        full, I/O error, interrupt) is cut off again before the error propagates and nothing is folded; only
        a kill can leave a torn tail, which the next ``read`` removes.
        """
        self._write([e.to_json() for e in events], sync=sync)
        for event in events:
            _fold(self.state, event)

    def _write(self, records: Iterable[dict[str, Any]], sync: bool = True) -> None:
        """Append JSON records and make them durable before returning (all or nothing, see ``record``)."""
        assert self._fd is not None, "journal not open"
        data = "".join(_dumps(r) for r in records).encode("utf-8")
        if not data:
            return
        fd = self._fd
        start = os.fstat(fd).st_size
        try:
            if fault_armed("journal_write"):
                os.write(fd, data[: max(1, len(data) // 2)])
                os.kill(os.getpid(), signal.SIGKILL)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except BaseException:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise

    def size(self) -> int:
        """Bytes in the journal: it only grows, so an unchanged size means no new records."""
        assert self._fd is not None, "journal not open"
        return os.fstat(self._fd).st_size

    def still_linked(self) -> bool:
        """False when the journal file was deleted under us (output folder removed mid-run)."""
        if self._fd is None:
            return False
        try:
            return os.fstat(self._fd).st_nlink > 0 and os.path.samestat(os.fstat(self._fd), os.stat(self.path))
        except OSError:
            return False

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None
