"""results.csv: the human-readable view of the journal, one row per finished placement, regenerated from it.

New columns are only ever appended at the end (RESULT_FIELDS), and a results.csv written by an older
dermsort keeps its column order (``result_columns``). Text a spreadsheet would run as a formula is
neutralised (``csv_cell``). File names that are not UTF-8 are written as their original bytes.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from .faults import fault_point
from .journal import JournalState
from .records import Intent

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


def status(state: JournalState, rec: Intent, out: Path | None = None) -> str:
    """The ``status`` cell of a finished placement (see RESULT_DOCS)."""
    if out is not None and rec.dest and not os.path.lexists(out / rec.dest):
        return "missing from OUT"
    latest = state.by_source.get(rec.file or "")
    if rec.file and latest and latest != rec.id and rec.id not in state.completed_moves:
        return f"superseded by {state.intents[latest].dest} (the input changed and was sorted again)"
    if rec.recovered_from_output:
        return "recovered (found in OUT without a journal record)"
    if rec.mode == "move" and rec.id not in state.completed_moves and rec.file:
        return "source kept"
    return ""


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
        row = {**rec.row(), "status": status(state, rec, out)}
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
            os.fsync(fh.fileno())
        fault_point("results")
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return True
