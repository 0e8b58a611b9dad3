"""The journal's records, each field defined once: what a line of ``OUT/.dermsort/journal.jsonl`` holds.

Five events: ``intent`` (a placement, written before its file appears in benign/ or review/), ``done``
(after the placed file is durable), ``abort`` (a placement rolled back), ``source_removed`` (``--move``:
the input is gone) and ``claim`` (an input seen again is the source of a file recovered from OUT).
``to_json`` gives exactly the object earlier versions wrote (the journal is JSON with sorted keys, so
the field order here is free); ``parse`` reads any version's line: a field an older dermsort did not
write reads as None (results.csv shows an empty cell, as before), a field this version does not know is
kept in ``extra``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass
class Intent:
    """One placement: which input, classified how, placed where (``dest``, relative to OUT)."""

    id: str
    #: the input as it was found (absolute path); "" for a file found in OUT without a journal record
    file: str = ""
    #: relative to OUT: benign/NAME or review/NAME ("" until a name is chosen)
    dest: str = ""
    #: of the exact bytes that were classified ("" when the file could not be read)
    sha256: str = ""
    decision: str = ""
    reason: str | None = None
    relpath: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    ino: int | None = None
    ctime_ns: int | None = None
    p_malignant: float | None = None
    threshold: float | None = None
    threshold_overridden: bool | None = None
    backend: str | None = None
    artifact: str | None = None
    precision: str | None = None
    artifact_accepted: bool | None = None
    signature: str | None = None
    model_id: str | None = None
    time: str | None = None
    mode: str | None = None
    run_id: str | None = None
    host: str | None = None
    top_dx: str | None = None
    top_dx_p: float | None = None
    site_profile: Any = None
    gate_score: float | None = None
    # written only when set
    not_an_image: bool = False
    #: found in OUT without a journal record (journal damage) and recorded again
    recovered_from_output: bool = False
    #: moved within OUT by reconcile (benign/ -> review/): its earlier name
    relocated_from: str = ""
    #: fields of a newer dermsort's line, kept as they were read
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"event": "intent", "id": self.id}
        for f in _INTENT_FIELDS:
            value = getattr(self, f)
            if f not in _WRITTEN_WHEN_SET or value:
                rec[f] = value
        return {**rec, **self.extra}

    def row(self) -> dict[str, Any]:
        """The fields by name (None: not recorded), the results.csv view's input."""
        accepted = True if self.artifact_accepted is None else self.artifact_accepted  # before it was recorded
        return {**self.to_json(), "artifact_accepted": accepted}


@dataclass
class Done:
    """The placement ``id`` is durable: its file is in place, fsync'd, under its name."""

    id: str
    #: finished by the next run's recovery (its intent was durable, the run was killed before done)
    recovered: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"event": "done", "id": self.id, **({"recovered": True} if self.recovered else {})}


@dataclass
class Abort:
    """The placement ``id`` was rolled back (nothing of it is in OUT); ``why`` says why."""

    id: str
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"event": "abort", "id": self.id, "why": self.why}


@dataclass
class SourceRemoved:
    """``--move``: the input of placement ``id`` was removed (or, ``observed``, found gone by recovery)."""

    id: str
    observed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"event": "source_removed", "id": self.id, **({"observed": True} if self.observed else {})}


#: the input fields a claim gives the placement it names
CLAIM_FIELDS = ("file", "relpath", "size", "mtime_ns", "ino", "ctime_ns")


@dataclass
class Claim:
    """An input seen again is the source of placement ``id`` (recovered from OUT, or sorted under another name)."""

    id: str
    file: str
    relpath: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    ino: int | None = None
    ctime_ns: int | None = None
    #: the CLAIM_FIELDS this record carries (all of them, except in a line an older dermsort wrote)
    present: tuple[str, ...] = CLAIM_FIELDS

    def to_json(self) -> dict[str, Any]:
        return {"event": "claim", "id": self.id, **{f: getattr(self, f) for f in self.present}}


Event = Union[Intent, Done, Abort, SourceRemoved, Claim]

_INTENT_FIELDS = tuple(f.name for f in dataclasses.fields(Intent) if f.name not in ("id", "extra"))
_WRITTEN_WHEN_SET = ("not_an_image", "recovered_from_output", "relocated_from")


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


def parse(rec: dict[str, Any]) -> Event | None:
    """The typed record of a journal line that ``is_record`` accepted; None for an event this version ignores."""
    event, rid = rec.get("event"), rec["id"]
    if event == "intent":
        known = {k: v for k, v in rec.items() if k in _INTENT_NAMES}
        extra = {k: v for k, v in rec.items() if k not in _INTENT_NAMES and k not in ("event", "id")}
        for flag in _WRITTEN_WHEN_SET:  # written only when set: a null reads as unset
            if known.get(flag) is None:
                known.pop(flag, None)
        return Intent(id=rid, **known, extra=extra)
    if event == "done":
        return Done(rid, recovered=bool(rec.get("recovered")))
    if event == "abort":
        return Abort(rid, why=rec.get("why") or "")
    if event == "source_removed":
        return SourceRemoved(rid, observed=bool(rec.get("observed")))
    if event == "claim" and isinstance(rec.get("file"), str):
        present = tuple(f for f in CLAIM_FIELDS if f in rec)
        return Claim(rid, **{f: rec[f] for f in present}, present=present)
    return None


_INTENT_NAMES = frozenset(_INTENT_FIELDS)
