"""The parity gate: every derived artifact, run by its real runtime backend, against the FP32 reference.

Parity is an object with numbers and explicit tolerances (Polygraphy's comparator, Optimum's
``validate_model_outputs``), stored in ``Artifact.parity``. The gate runs on a labelled held-out set
and decides on the two things that matter for triage:

* **sensitivity** at the artifact's own operating threshold may not drop more than
  ``max_sensitivity_drop`` (1 percentage point) below the reference's sensitivity at its threshold;
* **decision flips** (benign <-> review, artifact at its threshold vs reference at its threshold) may
  not exceed ``max_flip_rate`` (1 %) of the set.

Threshold recalibration (``dermsort.train.metrics.choose_threshold`` with ``max_benign``: the package's
one threshold picker; AUC and operating points come from that module too) -- why it is not simply
"the largest threshold whose sensitivity >= the reference's":

1. On a finite set the largest such threshold *is* the score of the k-th most suspicious malignant
   image (k = ceil(S_ref * n_malignant)), so that image sits exactly on the threshold with zero
   margin. Every threshold in the gap between that score and the next lower score gives the same
   decisions on the set, so we take the middle of the gap: identical figures, a margin against
   numeric noise (another CPU, another library version) on the image that defines sensitivity.
2. The reference's threshold came from training's own validation split, so on the gate set it is
   usually *not* tight: there is room above it before a malignant image is lost. Taking the largest
   threshold would hand a derived artifact a higher specificity than the reference on the very set
   that measures it -- an FP16 model identical to FP32 would "flip" every image in that room to
   benign and be rejected, or, worse, accepted at a different operating point than the one validated.
   So the threshold is also capped so the artifact sends no more gate images to benign/ than the
   reference does. For an artifact that ranks images like the reference (any monotone drift, e.g. a
   systematic INT8 offset) this reproduces the reference's decisions exactly: zero flips.

Consequence, stated plainly: because the threshold is fitted on the gate set, sensitivity at it is
>= the reference's *on that set* by construction; the sensitivity check only fires when
recalibration is off (``recalibrate=False``: fixed thresholds, e.g. re-checking an existing bundle).
The criterion that carries information after recalibration is the flip rate -- it catches an
artifact that reorders images (noise, broken weights, a bad quantisation), which no threshold can
repair. Specificity lost to recalibration shows up as flips to review and in ``specificity_drop``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dermsort.runtime.backends.base import create_backend
from dermsort.runtime.bundle import Artifact, Bundle
from dermsort.train.metrics import auc_score, choose_threshold, operating_point


@dataclass(frozen=True)
class Tolerances:
    """The gate's limits (fractions, not percent)."""

    max_sensitivity_drop: float = 0.01
    max_flip_rate: float = 0.01


@dataclass
class ParityResult:
    """One artifact against the reference on the labelled set: numbers, tolerances, verdict."""

    artifact: str
    #: "reference" | "passed" | "failed" | "unverified"
    status: str
    reference: str = ""
    n_images: int = 0
    n_malignant: int = 0
    threshold: float | None = None
    reference_threshold: float | None = None
    recalibrated: bool = False
    auc: float | None = None
    auc_reference: float | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    sensitivity_reference: float | None = None
    specificity_reference: float | None = None
    sensitivity_drop: float | None = None
    specificity_drop: float | None = None
    flips: int | None = None
    flip_rate: float | None = None
    #: reference said review, artifact says benign (the dangerous direction) / of those, malignant
    flips_to_benign: int | None = None
    malignant_to_benign: int | None = None
    #: what the artifact would do at the reference's threshold, without recalibration
    sensitivity_at_reference_threshold: float | None = None
    flips_at_reference_threshold: int | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    #: expected max |p diff| for this precision (informational; the gate uses sensitivity and flips)
    atol: float | None = None
    within_atol: bool | None = None
    tolerances: dict[str, float] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status in ("passed", "reference")

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def predict_p_malignant(bundle: Bundle, artifact: Artifact, tensors: np.ndarray,
                        batch_size: int = 16) -> tuple[np.ndarray, dict[str, Any]]:
    """P(malignant) for preprocessed images, through the runtime backend that will run in production."""
    backend = create_backend(artifact.backend, bundle, artifact)
    with backend:
        parts = [backend.p_malignant(backend.predict(tensors[i:i + batch_size]))
                 for i in range(0, len(tensors), batch_size)]
        described = backend.describe()
    return np.concatenate(parts), described


def reference_result(name: str, p_ref: np.ndarray, malignant: np.ndarray, threshold: float,
                     backend: dict[str, Any] | None = None) -> ParityResult:
    sens, spec = operating_point(malignant, p_ref, threshold)
    return ParityResult(artifact=name, status="reference", reference=name, n_images=len(p_ref),
                        n_malignant=int(malignant.sum()), threshold=threshold, reference_threshold=threshold,
                        auc=auc_score(malignant, p_ref), auc_reference=auc_score(malignant, p_ref), sensitivity=sens,
                        specificity=spec, sensitivity_reference=sens, specificity_reference=spec,
                        sensitivity_drop=0.0, specificity_drop=0.0, flips=0, flip_rate=0.0, flips_to_benign=0,
                        malignant_to_benign=0, max_abs_diff=0.0, mean_abs_diff=0.0, backend=backend or {},
                        message=f"{name} is the reference: sensitivity {_pct(sens)}, specificity {_pct(spec)} "
                                f"at threshold {threshold:.4f} on {len(p_ref)} labelled images")


def compare(name: str, p_art: np.ndarray, p_ref: np.ndarray, malignant: np.ndarray, reference_threshold: float,
            reference: str = "onnx-fp32", tolerances: Tolerances = Tolerances(), atol: float | None = None,
            recalibrate: bool = True, threshold: float | None = None,
            backend: dict[str, Any] | None = None) -> ParityResult:
    """Judge one artifact's P(malignant) against the reference's on the same labelled images."""
    p_art, p_ref = np.asarray(p_art, np.float64), np.asarray(p_ref, np.float64)
    malignant = np.asarray(malignant, dtype=int)
    sens_ref, spec_ref = operating_point(malignant, p_ref, reference_threshold)
    ref_review = p_ref >= reference_threshold
    if recalibrate:
        threshold = choose_threshold(malignant, p_art, sens_ref or 0.0, max_benign=int((~ref_review).sum()))
    elif threshold is None:
        threshold = reference_threshold
    sens, spec = operating_point(malignant, p_art, threshold)
    review = p_art >= threshold
    flips = int((review != ref_review).sum())
    to_benign = ref_review & ~review
    sens_at_ref, _ = operating_point(malignant, p_art, reference_threshold)
    diff = np.abs(p_art - p_ref)
    result = ParityResult(
        artifact=name, status="passed", reference=reference, n_images=len(p_art), n_malignant=int(malignant.sum()),
        threshold=float(threshold), reference_threshold=float(reference_threshold), recalibrated=recalibrate,
        auc=auc_score(malignant, p_art), auc_reference=auc_score(malignant, p_ref), sensitivity=sens, specificity=spec,
        sensitivity_reference=sens_ref, specificity_reference=spec_ref,
        sensitivity_drop=(sens_ref - sens) if sens is not None and sens_ref is not None else None,
        specificity_drop=(spec_ref - spec) if spec is not None and spec_ref is not None else None,
        flips=flips, flip_rate=flips / len(p_art), flips_to_benign=int(to_benign.sum()),
        malignant_to_benign=int((to_benign & (malignant == 1)).sum()),
        sensitivity_at_reference_threshold=sens_at_ref,
        flips_at_reference_threshold=int(((p_art >= reference_threshold) != ref_review).sum()),
        max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), atol=atol,
        within_atol=None if atol is None else bool(diff.max() <= atol), tolerances=asdict(tolerances),
        backend=backend or {})
    # a tiny epsilon so 0.01 vs 0.01 computed two ways never decides a verdict
    result.checks = {
        "sensitivity_drop": (result.sensitivity_drop or 0.0) <= tolerances.max_sensitivity_drop + 1e-9,
        "flip_rate": result.flip_rate <= tolerances.max_flip_rate + 1e-9,
    }
    problems = []
    if not result.checks["sensitivity_drop"]:
        problems.append(f"sensitivity {_pct(sens)} vs reference {_pct(sens_ref)} "
                        f"(drop {100 * result.sensitivity_drop:.1f} pp > {100 * tolerances.max_sensitivity_drop:.1f} pp allowed)")
    if not result.checks["flip_rate"]:
        problems.append(f"{flips} decision flips vs {reference} on {len(p_art)} images "
                        f"({100 * result.flip_rate:.1f} % > {100 * tolerances.max_flip_rate:.1f} % allowed; "
                        f"{result.flips_to_benign} to benign, {result.malignant_to_benign} of them malignant)")
    if problems:
        result.status = "failed"
        result.message = (f"{name} REJECTED by the parity gate: " + "; ".join(problems)
                          + f"; max |p diff| {result.max_abs_diff:.3g}")
    else:
        result.message = (f"{name} passed: sensitivity {_pct(sens)} (reference {_pct(sens_ref)}), specificity "
                          f"{_pct(spec)} (reference {_pct(spec_ref)}), {flips} flip(s) on {len(p_art)} images, "
                          f"threshold {threshold:.4f}, max |p diff| {result.max_abs_diff:.3g}")
    return result


def unverified(name: str, reason: str) -> ParityResult:
    return ParityResult(artifact=name, status="unverified", message=f"{name} unverified: {reason}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
