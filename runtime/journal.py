"""The results journal: an append-only JSON-lines file that is the sorter's source of truth.

Every placement is written as an ``intent`` (before the file appears in benign/ or review/) and
then a ``done`` (after it is durable), each written with ``os.write`` on an ``O_APPEND`` descriptor
and fsync'd. A run killed at any point leaves a journal from which the next run finishes or rolls
back every placement; a torn last line (killed mid-write) is cut off by the next writer, and a
write that fails (disk full) is rolled back at once, so the journal never holds half a record.
``results.csv`` is a human-readable view regenerated from the journal; new columns are only ever
appended at the end, and a results.csv written by an older dermsort keeps its column order.

File names that are not valid UTF-8 (``os.fsdecode`` gives lone surrogates) are stored with JSON
``\\udcXX`` escapes, so they round-trip exactly and the journal stays valid UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .fileops import OPEN_FLAGS, fsync_dir, fsync_file, link

#: results.csv columns; new ones go at the END so readers of older files (by position) keep working.
#: ``top_dx``/``top_dx_p``: a diagnosis head's most likely class, for display only (empty for binary models).
RESULT_FIELDS = ["file", "dest", "sha256", "decision", "p_malignant", "threshold", "backend", "artifact",
                 "model_id", "time", "reason", "mode", "top_dx", "top_dx_p", "relpath", "threshold_overridden",
                 "artifact_accepted", "status", "site_profile", "signature", "gate_score"]
#: what each column holds (README "What you get"; a test keeps the two in step)
RESULT_DOCS = {
    "file": "the input file as it was found (absolute path); empty for a file found in OUT without a journal record",
    "dest": "where it is now, relative to OUT (benign/NAME or review/NAME; NAME__N.ext on a name clash)",
    "sha256": "sha256 of the exact bytes that were classified (and verified in the output)",
    "decision": "benign or review",
    "p_malignant": "the model's P(malignant), 6 decimals; empty when the image could not be scored",
    "threshold": "the operating threshold that was applied (p_malignant < threshold -> benign)",
    "backend": "the inference backend that ran (onnxruntime, openvino, tensorrt)",
    "artifact": "the model artifact that ran (e.g. onnx-fp32, openvino-int8)",
    "model_id": "the model bundle's id",
    "time": "when it was classified (local time, ISO 8601)",
    "reason": "why it went where it went (the p-threshold comparison, or the input problem)",
    "mode": "copy (the input was left) or move (the input is removed once the copy is verified; see status)",
    "top_dx": "diagnosis-head models: the most likely of the 7 HAM10000 diagnoses (information only)",
    "top_dx_p": "its probability (information only)",
    "relpath": "the input file's path relative to the input folder (keeps subfolders with --recursive)",
    "threshold_overridden": "True when --threshold replaced the validated threshold",
    "artifact_accepted": "False when an artifact the export's parity gate rejected ran (--allow-rejected-artifact)",
    "status": "empty normally; 'superseded by DEST' when the input changed and was sorted again, 'source kept' "
              "when --move could not remove the input, 'missing from OUT' when the file was removed from the output "
              "afterwards, 'recovered' for a file found in OUT without a journal record",
    "site_profile": "the site profile whose threshold applied (NAME@DIGEST: the profile file's name and the first 12 "
                    "digits of its digest; see `dermsort info`); empty without one",
    "signature": "who vouched for the model bundle that decided: 'signed by KEY-ID' (a trusted key), 'signed by "
                 "UNTRUSTED key KEY-ID' or 'unsigned (locally built)'; empty for rows of runs before it was recorded",
    "gate_score": "the not-dermoscopy gate's score, 6 decimals (score >= the gate threshold in `dermsort info` -> "
                  "review/, reason 'not recognised as a dermoscopy image'); empty for a model without a gate or an "
                  "image that could not be scored",
}
#: a text cell starting with one of these is a formula to a spreadsheet: it is written with a leading '
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

#: Test hook (tests/fault_harness.py): ``DERMSORT_FAULT_AT="STEP:N[:SIG]"`` sends this process
#: SIGKILL (or SIG, e.g. TERM) the N-th time it reaches STEP. Steps: tmp_written, intent, link,
#: dir_fsync, done, unlink, journal_write (dies after writing half of a journal append), recovered,
#: results. Unset (always, outside tests) it costs one environment lookup per step.
FAULT_ENV = "DERMSORT_FAULT_AT"
FAULT_STEPS = ("tmp_written", "intent", "link", "dir_fsync", "done", "unlink", "journal_write", "recovered",
               "results")
_fault_seen: dict[str, int] = {}


def fault_point(step: str) -> bool:
    """Count ``step``; signal the process at the armed occurrence (only when DERMSORT_FAULT_AT is set)."""
    if fault_armed(step):
        sig = (os.environ.get(FAULT_ENV, "").split(":") + ["", "", ""])[2] or "KILL"
        # Windows has no SIGKILL: os.kill there is TerminateProcess, just as abrupt
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}", signal.SIGTERM))
    return False


def fault_armed(step: str) -> bool:
    """True exactly once: at the N-th occurrence of ``step`` named by DERMSORT_FAULT_AT=STEP:N."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return False
    name, _, rest = spec.partition(":")
    if name != step:
        return False
    _fault_seen[step] = _fault_seen.get(step, 0) + 1
    try:
        return _fault_seen[step] == int(rest.partition(":")[0] or 1)
    except ValueError:
        return False


@dataclass
class JournalState:
    """Placements folded from the journal: id -> record, and which are finished."""

    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    aborted: set[str] = field(default_factory=set)
    completed_moves: set[str] = field(default_factory=set)
    #: source path -> id of its latest finished placement
    by_source: dict[str, str] = field(default_factory=dict)
    #: lines that were not journal records (damage: garbage, a cut in the middle); counted for a warning
    bad_lines: int = 0
    #: bytes cut from a torn last line
    torn_bytes: int = 0

    def pending(self) -> list[dict[str, Any]]:
        return [r for i, r in self.intents.items() if i not in self.done and i not in self.aborted]

    def finished(self) -> list[dict[str, Any]]:
        return [self.intents[i] for i in self.intents if i in self.done]

    def claimed_dests(self) -> set[str]:
        return {r["dest"] for i, r in self.intents.items() if i not in self.aborted and r.get("dest")}

    def unclaimed_recovered(self) -> dict[str, str]:
        """sha256 -> id of files found in OUT without a journal record whose input was not seen yet."""
        return {r["sha256"]: i for i, r in self.intents.items()
                if i in self.done and r.get("recovered_from_output") and not r.get("file") and r.get("sha256")}

    def sorted_elsewhere(self) -> dict[str, str]:
        """sha256 -> id of finished placements whose input is no longer where it was recorded and was not
        removed by dermsort (renamed or moved by its owner, the input folder renamed): an input with those
        bytes is that image under another name, not a new one."""
        found: dict[str, str] = {}
        for rid in self.done:
            rec = self.intents[rid]
            if rid in self.completed_moves or not rec.get("sha256") or not rec.get("file"):
                continue
            if self.by_source.get(rec["file"]) != rid or rec["sha256"] in found:
                continue  # superseded by a later placement of that name
            if not os.path.lexists(rec["file"]):
                found[rec["sha256"]] = rid
        return found

    def status(self, rec: dict[str, Any], out: Path | None = None) -> str:
        """The results.csv ``status`` of a finished placement (see RESULT_DOCS)."""
        if out is not None and rec.get("dest") and not os.path.lexists(out / rec["dest"]):
            return "missing from OUT"
        latest = self.by_source.get(rec.get("file") or "")
        if rec.get("file") and latest and latest != rec["id"] and rec["id"] not in self.completed_moves:
            return f"superseded by {self.intents[latest].get('dest')} (the input changed and was sorted again)"
        if rec.get("recovered_from_output"):
            return "recovered (found in OUT without a journal record)"
        if rec.get("mode") == "move" and rec["id"] not in self.completed_moves and rec.get("file"):
            return "source kept"
        return ""


def is_record(rec: Any) -> bool:
    """A journal line that can be folded: an object with an id, and an intent with everything a placement
    needs (a destination, the sha256 key, a decision). An intent without them is damage: folded, it would
    give results.csv a row with no destination beside the "recovered" row of the same file."""
    if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
        return False
    if rec.get("event") == "intent":
        return (isinstance(rec.get("dest"), str) and bool(rec["dest"]) and isinstance(rec.get("sha256"), str)
                and rec.get("decision") in ("benign", "review") and isinstance(rec.get("file"), str))
    return True


def _dumps(rec: dict[str, Any]) -> str:
    line = json.dumps(rec, ensure_ascii=False, sort_keys=True)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: escape it (json.loads gives it back)
        line = json.dumps(rec, ensure_ascii=True, sort_keys=True)
    return line + "\n"


class Journal:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def read(self, repair: bool = True) -> JournalState:
        """Fold the journal. ``repair`` cuts a torn last line; only the lock holder may do that."""
        state = JournalState()
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
                fsync_file(fh.fileno())
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8", "surrogateescape"))
            except ValueError:
                state.bad_lines += 1
                continue
            if is_record(rec):
                self.fold(state, rec)
            else:
                state.bad_lines += 1
        return state

    @staticmethod
    def fold(state: JournalState, rec: dict[str, Any]) -> None:
        event, rid = rec.get("event"), rec.get("id")
        if event == "intent":
            state.intents[rid] = rec
        elif event == "done" and rid in state.intents:
            state.done.add(rid)
            state.by_source[state.intents[rid]["file"]] = rid
        elif event == "abort":
            state.aborted.add(rid)
        elif event == "source_removed":
            state.completed_moves.add(rid)
        elif event == "claim" and rid in state.intents:
            # the input of a placement recovered from OUT was seen again: it is that placement's source
            state.intents[rid].update({k: rec[k] for k in ("file", "relpath", "size", "mtime_ns", "ino", "ctime_ns")
                                       if k in rec})
            if rid in state.done:
                state.by_source[rec["file"]] = rid

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
        link(self.path, kept)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(good))
            fh.flush()
            fsync_file(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        return kept

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | OPEN_FLAGS, 0o644)
        if created:  # the journal's own name must survive a power cut, like the files it describes
            fsync_dir(self.path.parent)

    def append(self, records: Iterable[dict[str, Any]], sync: bool = True) -> None:
        """Append records and make them durable before returning.

        All or nothing: if the write fails (disk full, I/O error, interrupt) what was written of
        it is cut off again before the error propagates. Only a kill can leave a torn tail, which
        the next ``read`` removes.
        """
        assert self._fd is not None, "journal not open"
        data = "".join(_dumps(r) for r in records).encode("utf-8")
        if not data:
            return
        fd = self._fd
        start = os.fstat(fd).st_size
        try:
            if fault_armed("journal_write"):
                os.write(fd, data[: max(1, len(data) // 2)])
                os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                fsync_file(fd)
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


def csv_cell(value: Any) -> Any:
    """A journal value as a results.csv cell: text a spreadsheet would run as a formula is neutralised.

    Numbers stay numbers (a negative one is not a formula); None is an empty cell.
    """
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def result_columns(existing_header: list[str] | None = None) -> list[str]:
    """The columns of results.csv: RESULT_FIELDS, or, when an existing results.csv has another (older)
    header, that file's columns in its order with the missing ones appended at the end, so that a
    re-run never shifts a column under a reader of the old file."""
    if not existing_header or existing_header == RESULT_FIELDS:
        return list(RESULT_FIELDS)
    names = list(existing_header)
    plausible = ("file" in names and len(set(names)) == len(names)
                 and all(n and n.replace("_", "").isalnum() and n.isascii() for n in names))
    if not plausible:  # not a results.csv header (damaged, or some other file): start afresh
        return list(RESULT_FIELDS)
    return names + [f for f in RESULT_FIELDS if f not in names]


def read_header(data: bytes) -> list[str] | None:
    """The header row of results.csv bytes; None when there is none."""
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not first:
        return None
    try:
        return next(csv.reader([first.decode("utf-8", "surrogateescape")]))
    except (csv.Error, StopIteration):
        return None


def results_csv_text(state: JournalState, columns: list[str] | None = None, out: Path | None = None) -> str:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=columns or RESULT_FIELDS, extrasaction="ignore", restval="")
    writer.writeheader()
    for rec in state.finished():
        row = {"artifact_accepted": True, **rec, "status": state.status(rec, out)}
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
    return buf.getvalue()


def write_results_csv(state: JournalState, target: Path) -> bool:
    """Regenerate results.csv (one row per finished placement) atomically; False when it was already current.

    Names that are not UTF-8 are written as their original bytes (``surrogateescape``). An existing
    results.csv with an older header keeps its column order (see ``result_columns``).
    """
    try:
        old: bytes | None = target.read_bytes()
    except OSError:
        old = None
    columns = result_columns(read_header(old) if old else None)
    data = results_csv_text(state, columns, target.parent).encode("utf-8", "surrogateescape")
    if old == data:
        return False
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            fsync_file(fh.fileno())
        fault_point("results")
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return True
