"""The results journal: an append-only JSON-lines file that is the sorter's source of truth.

Every placement is written as an ``intent`` (before the file appears in benign/ or review/) and
then a ``done`` (after it is durable), each flushed and fsync'd. A run killed at any point leaves a
journal from which the next run finishes or rolls back every placement; a torn last line (killed
mid-write) is cut off. ``results.csv`` is a human-readable view regenerated from the journal.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

RESULT_FIELDS = ["file", "dest", "sha256", "decision", "p_malignant", "threshold", "backend", "artifact",
                 "model_id", "time", "reason", "mode"]


@dataclass
class JournalState:
    """Placements folded from the journal: id -> record, and which are finished."""

    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    aborted: set[str] = field(default_factory=set)
    completed_moves: set[str] = field(default_factory=set)
    #: source path -> id of its latest finished placement
    by_source: dict[str, str] = field(default_factory=dict)

    def pending(self) -> list[dict[str, Any]]:
        return [r for i, r in self.intents.items() if i not in self.done and i not in self.aborted]

    def finished(self) -> list[dict[str, Any]]:
        return [self.intents[i] for i in self.intents if i in self.done]

    def claimed_dests(self) -> set[str]:
        return {r["dest"] for i, r in self.intents.items() if i not in self.aborted and r.get("dest")}


class Journal:
    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def read(self) -> JournalState:
        state = JournalState()
        if not self.path.exists():
            return state
        with open(self.path, "rb") as fh:
            data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # torn tail from a kill mid-write: that record was never acknowledged, so it never happened
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            self._fold(state, rec)
        return state

    @staticmethod
    def _fold(state: JournalState, rec: dict[str, Any]) -> None:
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

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, records: Iterable[dict[str, Any]], sync: bool = True) -> None:
        """Append records and make them durable before returning."""
        assert self._fh is not None, "journal not open"
        lines = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        if not lines:
            return
        self._fh.write(lines)
        self._fh.flush()
        if sync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def write_results_csv(state: JournalState, target: Path) -> None:
    """Regenerate results.csv (one row per finished placement) atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for rec in state.finished():
            writer.writerow(rec)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
