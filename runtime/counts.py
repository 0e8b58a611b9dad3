"""One set of counts for what a sort placed, rendered by every surface: the terminal summary, ``--json``,
``report.html`` (from results.csv) and the watch stop line. One categorisation (``category``), one set of
definitions (``Counts``), so the numbers cannot disagree; a new category is a new field here.

- ``benign``: files in benign/;
- ``review``: images in review/ (the model's p at or above the threshold, or an input check on an image);
- ``not_images``: files in review/ that are not images at all (text, zip, empty...), counted apart;
- ``input_problems``: of the files in review/, those sent there by an input check (not-images included);
- ``not_dermoscopy``: of the images in review/, those the not-dermoscopy gate did not recognise as
  dermoscopy (an input problem too);
- ``superseded``: rows whose input changed and was sorted again (results.csv ``status``): counted nowhere else;
- ``work_reduction``: benign / images (non-image files are not work a clinician is spared).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

#: reasons that mean "this is not an image" (counted on their own)
NOT_AN_IMAGE = ("not a readable image", "empty file", "unsupported image format", "extension ")
#: the reason's start when the not-dermoscopy gate sent an image to review/ (runtime/sorter.py ``decide``)
NOT_DERMOSCOPY = "not recognised as a dermoscopy image"
#: the reason of a decision the model made; any other reason is an input problem
MODEL_REASON = "p_malignant "
#: what reconcile puts in front of the reason of a file found in OUT without a journal record
RECOVERED_PREFIX = "found in OUT without a journal record; "
#: "near the threshold": p within this distance of the threshold on the log-odds scale (odds x/÷ 1.65)
NEAR_LOGODDS = 0.5


def _reason(reason: Any) -> str:
    text = str(reason or "")
    return text[len(RECOVERED_PREFIX):] if text.startswith(RECOVERED_PREFIX) else text


def category(decision: str, reason: Any, not_an_image: bool = False) -> str:
    """benign | review | not_image: where a placed file is counted."""
    if decision == "benign":
        return "benign"
    if not_an_image or _reason(reason).startswith(NOT_AN_IMAGE):
        return "not_image"
    return "review"


def is_input_problem(reason: Any) -> bool:
    return not _reason(reason).startswith(MODEL_REASON)


def is_not_dermoscopy(reason: Any) -> bool:
    return _reason(reason).startswith(NOT_DERMOSCOPY)


def near_threshold(p: float | None, threshold: float | None) -> bool:
    if p is None or threshold is None:
        return False

    def logit(x: float) -> float:
        x = min(max(x, 1e-6), 1 - 1e-6)
        return math.log(x / (1 - x))

    return abs(logit(p) - logit(threshold)) <= NEAR_LOGODDS


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass
class Counts:
    benign: int = 0
    review: int = 0
    not_images: int = 0
    input_problems: int = 0
    not_dermoscopy: int = 0
    near_threshold: int = 0
    superseded: int = 0

    @property
    def images(self) -> int:
        return self.benign + self.review

    @property
    def sorted(self) -> int:
        """Files placed: images and non-image files."""
        return self.images + self.not_images

    @property
    def in_review(self) -> int:
        """Everything in review/."""
        return self.review + self.not_images

    @property
    def work_reduction(self) -> float:
        return self.benign / self.images if self.images else 0.0

    def add(self, decision: str, reason: Any, not_an_image: bool = False, p: Any = None, threshold: Any = None,
            status: str = "") -> str:
        """Count one placed file (one results.csv row / one done record); returns its category."""
        if str(status or "").startswith("superseded"):
            self.superseded += 1
            return "superseded"
        cat = category(decision, reason, not_an_image)
        if cat == "benign":
            self.benign += 1
        elif cat == "not_image":
            self.not_images += 1
        else:
            self.review += 1
        if cat != "benign" and is_input_problem(reason):
            self.input_problems += 1
        if cat == "review" and is_not_dermoscopy(reason):
            self.not_dermoscopy += 1
        if not is_input_problem(reason) and near_threshold(_number(p), _number(threshold)):
            self.near_threshold += 1
        return cat

    @classmethod
    def of_rows(cls, rows: Iterable[Mapping[str, Any]]) -> "Counts":
        """Counts of results.csv rows (dicts with decision, reason, p_malignant, threshold, status)."""
        counts = cls()
        for r in rows:
            counts.add(r.get("decision", ""), r.get("reason", ""), False, r.get("p_malignant"), r.get("threshold"),
                       r.get("status", ""))
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images": self.images, "sorted": self.sorted,
                "work_reduction": round(self.work_reduction, 4)}

    def headline(self, verb: str = "sorted") -> str:
        """The terminal's one line (the page shows the same numbers under the same names)."""
        not_images = f", {self.not_images} not an image (in review/)" if self.not_images else ""
        gate = f" ({self.not_dermoscopy} not recognised as dermoscopy)" if self.not_dermoscopy else ""
        return (f"{verb} {self.images} image(s): {self.benign} benign, {self.review} review{gate}{not_images} "
                f"(work reduction {self.work_reduction:.1%})")
