"""What one sort run did: the counts by category, and every file it left, kept or skipped, with the reason.

The sorter builds it; placement reports into it what happened to each file (``count``, ``leave``,
``keep_source``); the command prints it and ``--json`` writes ``to_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .counts import Counts
from .records import Intent


@dataclass
class SortSummary:
    #: what was placed, by category: the same object (definitions in runtime/counts.py) that the review
    #: page builds from results.csv, so the terminal, --json and the page cannot disagree
    counts: Counts = field(default_factory=Counts)
    skipped_already_sorted: int = 0
    #: could not be placed (e.g. unreadable in copy mode, still being written); left where they are, listed here
    left_in_place: list[dict[str, str]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)
    #: --move: sorted (a verified copy is in the output) but the source could not be removed
    sources_kept: list[dict[str, str]] = field(default_factory=list)
    #: inputs whose bytes were already sorted under another name (renamed or moved since): recorded, not copied again
    same_as_sorted: list[dict[str, str]] = field(default_factory=list)
    recovered: int = 0
    #: files in OUT that the journal did not account for (damaged or deleted journal), recorded again
    reconciled: int = 0
    #: files in subfolders (without --recursive) and hidden files: not sorted, only counted
    in_subfolders: int = 0
    hidden: int = 0
    seconds: float = 0.0
    backend: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.0
    threshold_overridden: bool = False
    validated_threshold: float = 0.0
    artifact_accepted: bool = True
    decisions: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    #: results.csv could not be written (the journal has everything): the run must not report success
    results_error: str = ""

    @property
    def benign(self) -> int:
        return self.counts.benign

    @property
    def review(self) -> int:
        """Images in review/ (non-image files are ``not_images``)."""
        return self.counts.review

    @property
    def not_images(self) -> int:
        return self.counts.not_images

    @property
    def sorted(self) -> int:
        return self.counts.sorted

    @property
    def images(self) -> int:
        return self.counts.images

    @property
    def work_reduction(self) -> float:
        return self.counts.work_reduction

    @property
    def images_per_s(self) -> float:
        return self.sorted / self.seconds if self.seconds > 0 else 0.0

    def count(self, rec: Intent) -> None:
        """One placed (or, in a dry run, decided) file."""
        self.counts.add(rec.decision, rec.reason or "", rec.not_an_image, rec.p_malignant, rec.threshold)
        self.decisions.append({k: getattr(rec, k) for k in ("file", "relpath", "dest", "decision", "p_malignant",
                                                            "reason", "sha256", "top_dx", "top_dx_p", "gate_score")})

    def leave(self, file: str, reason: str) -> None:
        """A file that could not be placed and is left where it is (listed, and exit status 3)."""
        self.left_in_place.append({"file": file, "reason": reason})

    def keep_source(self, file: str, reason: str) -> None:
        """--move: a sorted file whose input could not be removed."""
        self.sources_kept.append({"file": file, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts.to_dict(), "skipped_already_sorted": self.skipped_already_sorted,
                "left_in_place": self.left_in_place, "ignored": self.ignored, "sources_kept": self.sources_kept,
                "same_as_sorted": self.same_as_sorted,
                "in_subfolders_not_sorted": self.in_subfolders, "hidden_files_not_sorted": self.hidden,
                "recovered_placements": self.recovered, "reconciled_files": self.reconciled,
                "seconds": round(self.seconds, 3),
                "images_per_s": round(self.images_per_s, 2), "backend": self.backend, "threshold": self.threshold,
                "threshold_overridden": self.threshold_overridden, "validated_threshold": self.validated_threshold,
                "artifact_accepted": self.artifact_accepted, "interrupted": self.interrupted,
                "results_error": self.results_error}
