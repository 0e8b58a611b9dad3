"""The decision rule and the intent record: what the sorter decides for one file, and how that is written down.

``decide`` is the whole rule, in one place: benign only for a clean image that the not-dermoscopy gate
(when the model has one) recognises as dermoscopy and whose p_malignant is strictly below the threshold;
everything else goes to review with a reason. The reasons' texts are matched by ``counts.py`` (MODEL_REASON,
NOT_DERMOSCOPY) and by tests: keep them as they are. ``intent_record`` fills the journal's intent record
(``records.Intent``) written before a file is placed.
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .counts import NOT_AN_IMAGE, NOT_DERMOSCOPY
from .metadata import GateSpec
from .records import Intent

if TYPE_CHECKING:  # pragma: no cover
    from .reading import Decoded

BENIGN, REVIEW = "benign", "review"


def decide(d: Decoded, p: float | None, gate_score: float | None, threshold: float,
           gate: GateSpec) -> tuple[str, str]:
    """(decision, reason): benign only if the image is clean, the not-dermoscopy gate (when the model has
    one) recognises it as dermoscopy (score < gate threshold), and p_malignant < threshold (strictly)."""
    if d.skip:
        return REVIEW, d.skip
    if d.error:
        return REVIEW, d.error
    if gate.enabled:
        if gate_score is None or not math.isfinite(gate_score):
            return REVIEW, f"gate output out of range ({gate_score})"
        if gate_score >= gate.threshold:
            return REVIEW, f"{NOT_DERMOSCOPY} (score {gate_score:.3f} >= {gate.threshold:.3f})"
    if p is None or not math.isfinite(p) or not -1e-4 <= p <= 1.0 + 1e-4:
        return REVIEW, f"model output out of range ({p})"
    if d.concerns:
        return REVIEW, "; ".join(d.concerns)
    if p < threshold:
        return BENIGN, f"p_malignant {p:.4f} < threshold {threshold:.4f}"
    return REVIEW, f"p_malignant {p:.4f} >= threshold {threshold:.4f}"


@dataclass(frozen=True)
class RunFacts:
    """What every intent record of one run shares: the run, the input folder, the threshold and the model."""

    run_id: str
    input_dir: Path
    threshold: float
    threshold_overridden: bool
    move: bool
    #: False only when a gate-rejected artifact was explicitly allowed
    artifact_accepted: bool
    #: who vouches for the bundle ("signed by KEY-ID" / "unsigned (locally built)")
    signature: str
    model_id: str
    site_profile: Any = None


def intent_record(d: Decoded, decision: str, reason: str, p: float | None, run: RunFacts,
                  backend: dict[str, Any], top: tuple[str, float] | tuple[None, None] = (None, None),
                  gate_score: float | None = None) -> Intent:
    """The journal's intent record for one file (``backend``: the backend's ``describe()``)."""
    return Intent(id=uuid.uuid4().hex, file=str(d.cand.path), relpath=os.path.relpath(d.cand.path, run.input_dir),
                  size=d.cand.size, mtime_ns=d.cand.mtime_ns, ino=d.cand.ino, ctime_ns=d.cand.ctime_ns,
                  sha256=d.sha256, decision=decision, p_malignant=None if p is None else round(p, 6),
                  threshold=run.threshold, threshold_overridden=run.threshold_overridden,
                  backend=backend.get("backend"), artifact=backend.get("artifact"), precision=backend.get("precision"),
                  artifact_accepted=run.artifact_accepted, signature=run.signature, model_id=run.model_id,
                  time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), reason=reason, mode="move" if run.move else "copy",
                  run_id=run.run_id, host=socket.gethostname(), dest="", top_dx=top[0], top_dx_p=top[1],
                  site_profile=run.site_profile, gate_score=None if gate_score is None else round(gate_score, 6),
                  not_an_image=bool(d.error and d.error.startswith(NOT_AN_IMAGE)))
