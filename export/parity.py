"""The parity gate: every derived artifact, run by its real runtime backend, against the FP32 reference.

Parity is an object with numbers and explicit tolerances (Polygraphy's comparator, Optimum's
``validate_model_outputs``), stored in ``Artifact.parity``. The gate runs on a labelled held-out set
(the ``val`` rows of every labels.csv given) and judges what matters for triage. A flip towards
review costs a clinician's time; a flip towards benign can cost a patient. So the directions are
counted apart and judged apart. An artifact passes only when ALL of these hold:

(a) **safety** -- two parts, both required:

    * sensitivity at the artifact's threshold >= the reference's sensitivity minus
      ``max_sensitivity_drop`` (default 0.01, i.e. 1 percentage point), and
    * ``malignant_to_benign`` (malignant images the reference sends to review and the artifact sends
      to benign) <= ``malignant_to_benign_allowed``, where::

          malignant_to_benign_allowed = max(0, floor((sens_ref - target_sensitivity) * n_malignant))

      ``target_sensitivity`` is the model's own validated target (``metadata.validation.
      target_sensitivity``, 0.95). In words: a malignant image may newly go to benign only as far as
      the reference's own margin above the target pays for it. A reference that sits exactly on (or
      below) its target allows none. Because the threshold is recalibrated (below), the artifact's
      sensitivity cannot fall under the reference's; a malignant image sent to benign is then a *swap*
      (another malignant image came to review in its place) -- the figure stays, the patient changes,
      and this check is what refuses it;

(b) **work** -- specificity at the artifact's (recalibrated) threshold >= the reference's minus
    ``max_specificity_drop`` (default 0.02, 2 percentage points);

(c) **churn** -- all decision flips (benign <-> review, both directions, artifact at its threshold vs
    reference at its threshold) <= ``max_flip_rate`` of the set (default 0.02). Reported split:
    ``flips_to_benign`` / ``flips_to_review`` and ``malignant_to_benign`` / ``benign_to_review``.

Why 2 % and not 1 % for (c): flips that only move benign images to review ARE the specificity loss of
(b); with ~75 % of the gate set benign, (b)'s 2 points equal ~1.5 % of all images flipping. A 1 % flip
bound would therefore silently override (b) and reject artifacts whose every flip is a benign image
sent to review within the stated specificity tolerance. At 2 % the flip bound only binds on churn
*beyond* what (b) already allows -- images reordered in both directions, which leaves the totals
intact but changes individual decisions (broken weights, noisy quantisation).

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
>= the reference's *on that set* by construction; the sensitivity-drop part of (a) only fires when
recalibration is off (``recalibrate=False``: fixed thresholds, e.g. re-checking an existing bundle).
After recalibration the informative checks are ``malignant_to_benign`` (swaps of malignant images),
the specificity drop (benign images the artifact needs in review to keep sensitivity) and the flip
rate (reordering no threshold can repair).
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
    """The gate's limits (fractions, not percent); see the module docstring for what each one guards."""

    #: (a) sensitivity at the artifact's threshold may be at most this far below the reference's
    max_sensitivity_drop: float = 0.01
    #: (c) share of gate images whose benign/review decision may differ from the reference's
    max_flip_rate: float = 0.02
    #: (b) specificity (after recalibration) may be at most this far below the reference's
    max_specificity_drop: float = 0.02


#: the target sensitivity the safety rule measures the reference's margin against, when the model
#: metadata does not say (dermsort.runtime.metadata.Validation.target_sensitivity has the same default)
DEFAULT_TARGET_SENSITIVITY = 0.95


def malignant_to_benign_allowed(n_caught_reference: int, n_malignant: int, target_sensitivity: float) -> int:
    """floor((sens_ref - target) * n_malignant), never below 0: how many malignant images may newly go to
    benign before the reference's margin above its target sensitivity is used up."""
    # sens_ref * n_malignant is the integer n_caught_reference: compute with it so 0.95 * 20 = 19 exactly
    return max(0, math.floor(n_caught_reference - target_sensitivity * n_malignant + 1e-9))


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
    #: reference said benign, artifact says review (costs work) / of those, benign
    flips_to_review: int | None = None
    benign_to_review: int | None = None
    #: the safety rule's inputs: target sensitivity, the reference's margin above it, what it allows
    target_sensitivity: float | None = None
    sensitivity_margin_reference: float | None = None
    malignant_to_benign_allowed: int | None = None
    #: what the artifact would do at the reference's threshold, without recalibration
    sensitivity_at_reference_threshold: float | None = None
    flips_at_reference_threshold: int | None = None
    #: the not-dermoscopy gate (gated models): decisions compared on dermoscopy and non-dermoscopy images;
    #: out -> in (the reference rejects, the artifact lets it through) counts like a malignant-to-benign flip
    gate_images: int | None = None
    gate_out_to_in: int | None = None
    gate_in_to_out: int | None = None
    gate_max_abs_diff: float | None = None
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


def predict_scores(bundle: Bundle, artifact: Artifact, tensors: np.ndarray, batch_size: int = 16
                   ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(P(malignant), not-dermoscopy gate scores or None, backend description) for preprocessed images,
    through the runtime backend that will run in production."""
    backend = create_backend(artifact.backend, bundle, artifact)
    p_parts, g_parts = [], []
    with backend:
        for i in range(0, len(tensors), batch_size):
            probs, gate = backend.infer(tensors[i:i + batch_size])
            p_parts.append(backend.p_malignant(probs))
            if gate is not None:
                g_parts.append(gate)
        described = backend.describe()
    return np.concatenate(p_parts), (np.concatenate(g_parts) if g_parts else None), described


def predict_p_malignant(bundle: Bundle, artifact: Artifact, tensors: np.ndarray,
                        batch_size: int = 16) -> tuple[np.ndarray, dict[str, Any]]:
    """P(malignant) for preprocessed images, through the runtime backend that will run in production."""
    p, _, described = predict_scores(bundle, artifact, tensors, batch_size)
    return p, described


def add_gate_parity(result: ParityResult, g_art: np.ndarray | None, g_ref: np.ndarray | None,
                    gate_threshold: float) -> ParityResult:
    """Fold the not-dermoscopy gate's decisions into ``result``: an image the reference rejects and the
    artifact lets through (out -> in) counts against the malignant-to-benign allowance; in -> out flips
    (dermoscopy sent to review, costs work) count as decision flips."""
    if g_art is None or g_ref is None or result.status == "reference":
        return result
    ref_out, art_out = np.asarray(g_ref) >= gate_threshold, np.asarray(g_art) >= gate_threshold
    result.gate_images = int(len(g_ref))
    result.gate_out_to_in = int((ref_out & ~art_out).sum())
    result.gate_in_to_out = int((~ref_out & art_out).sum())
    result.gate_max_abs_diff = float(np.abs(np.asarray(g_art, np.float64) - np.asarray(g_ref, np.float64)).max())
    allowed = result.malignant_to_benign_allowed or 0
    result.checks["malignant_to_benign"] = (result.malignant_to_benign or 0) + result.gate_out_to_in <= allowed
    rate = ((result.flips or 0) + result.gate_in_to_out) / max(1, result.n_images + result.gate_images)
    result.checks["flip_rate"] = result.checks["flip_rate"] and rate <= float(
        result.tolerances.get("max_flip_rate", 1.0)) + 1e-9
    note = (f"; gate: {result.gate_out_to_in} out->in, {result.gate_in_to_out} in->out on {result.gate_images} "
            f"images (max |score diff| {result.gate_max_abs_diff:.3g})")
    if not all(result.checks.values()) and result.status != "failed":
        result.status = "failed"
        result.message = (f"{result.artifact} REJECTED by the parity gate: the not-dermoscopy gate lets "
                          f"{result.gate_out_to_in} image(s) through that the reference rejects (with "
                          f"{result.malignant_to_benign} malignant-to-benign flip(s), {allowed} allowed)" + note)
    else:
        result.message += note
    return result


def reference_result(name: str, p_ref: np.ndarray, malignant: np.ndarray, threshold: float,
                     backend: dict[str, Any] | None = None,
                     target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> ParityResult:
    sens, spec = operating_point(malignant, p_ref, threshold)
    malignant = np.asarray(malignant, dtype=int)
    allowed = malignant_to_benign_allowed(int(((np.asarray(p_ref) >= threshold) & (malignant == 1)).sum()),
                                          int(malignant.sum()), target_sensitivity)
    return ParityResult(artifact=name, status="reference", reference=name, n_images=len(p_ref),
                        n_malignant=int(malignant.sum()), threshold=threshold, reference_threshold=threshold,
                        auc=auc_score(malignant, p_ref), auc_reference=auc_score(malignant, p_ref), sensitivity=sens,
                        specificity=spec, sensitivity_reference=sens, specificity_reference=spec,
                        sensitivity_drop=0.0, specificity_drop=0.0, flips=0, flip_rate=0.0, flips_to_benign=0,
                        malignant_to_benign=0, flips_to_review=0, benign_to_review=0, max_abs_diff=0.0,
                        mean_abs_diff=0.0, backend=backend or {}, target_sensitivity=float(target_sensitivity),
                        sensitivity_margin_reference=None if sens is None else sens - target_sensitivity,
                        malignant_to_benign_allowed=allowed,
                        message=f"{name} is the reference: sensitivity {_pct(sens)}, specificity {_pct(spec)} "
                                f"at threshold {threshold:.4f} on {len(p_ref)} labelled images; margin above the "
                                f"target sensitivity {_pct(target_sensitivity)}: {allowed} malignant image(s)")


def compare(name: str, p_art: np.ndarray, p_ref: np.ndarray, malignant: np.ndarray, reference_threshold: float,
            reference: str = "onnx-fp32", tolerances: Tolerances = Tolerances(), atol: float | None = None,
            recalibrate: bool = True, threshold: float | None = None,
            backend: dict[str, Any] | None = None,
            target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> ParityResult:
    """Judge one artifact's P(malignant) against the reference's on the same labelled images.

    Passes only when (a) sensitivity drop <= ``max_sensitivity_drop`` AND ``malignant_to_benign`` <=
    ``floor((sens_ref - target_sensitivity) * n_malignant)`` (0 when the reference has no margin),
    (b) specificity drop <= ``max_specificity_drop``, (c) flip rate <= ``max_flip_rate``.
    ``target_sensitivity``: the model's ``metadata.validation.target_sensitivity``.
    """
    p_art, p_ref = np.asarray(p_art, np.float64), np.asarray(p_ref, np.float64)
    malignant = np.asarray(malignant, dtype=int)
    is_mal, is_ben = malignant == 1, malignant == 0
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
    to_review = ~ref_review & review
    n_mal = int(is_mal.sum())
    allowed = malignant_to_benign_allowed(int((ref_review & is_mal).sum()), n_mal, target_sensitivity)
    sens_at_ref, _ = operating_point(malignant, p_art, reference_threshold)
    diff = np.abs(p_art - p_ref)
    result = ParityResult(
        artifact=name, status="passed", reference=reference, n_images=len(p_art), n_malignant=n_mal,
        threshold=float(threshold), reference_threshold=float(reference_threshold), recalibrated=recalibrate,
        auc=auc_score(malignant, p_art), auc_reference=auc_score(malignant, p_ref), sensitivity=sens, specificity=spec,
        sensitivity_reference=sens_ref, specificity_reference=spec_ref,
        sensitivity_drop=(sens_ref - sens) if sens is not None and sens_ref is not None else None,
        specificity_drop=(spec_ref - spec) if spec is not None and spec_ref is not None else None,
        flips=flips, flip_rate=flips / len(p_art), flips_to_benign=int(to_benign.sum()),
        malignant_to_benign=int((to_benign & is_mal).sum()), flips_to_review=int(to_review.sum()),
        benign_to_review=int((to_review & is_ben).sum()), target_sensitivity=float(target_sensitivity),
        sensitivity_margin_reference=None if sens_ref is None else sens_ref - target_sensitivity,
        malignant_to_benign_allowed=allowed,
        sensitivity_at_reference_threshold=sens_at_ref,
        flips_at_reference_threshold=int(((p_art >= reference_threshold) != ref_review).sum()),
        max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), atol=atol,
        within_atol=None if atol is None else bool(diff.max() <= atol), tolerances=asdict(tolerances),
        backend=backend or {})
    # a tiny epsilon so 0.01 vs 0.01 computed two ways never decides a verdict
    result.checks = {
        "sensitivity_drop": (result.sensitivity_drop or 0.0) <= tolerances.max_sensitivity_drop + 1e-9,
        "malignant_to_benign": result.malignant_to_benign <= allowed,
        "specificity_drop": (result.specificity_drop or 0.0) <= tolerances.max_specificity_drop + 1e-9,
        "flip_rate": result.flip_rate <= tolerances.max_flip_rate + 1e-9,
    }
    directions = (f"{result.flips_to_benign} to benign ({result.malignant_to_benign} malignant), "
                  f"{result.flips_to_review} to review ({result.benign_to_review} benign)")
    problems = []
    if not result.checks["sensitivity_drop"]:
        problems.append(f"sensitivity {_pct(sens)} vs reference {_pct(sens_ref)} "
                        f"(drop {100 * result.sensitivity_drop:.1f} pp > {100 * tolerances.max_sensitivity_drop:.1f} pp allowed)")
    if not result.checks["malignant_to_benign"]:
        problems.append(f"safety: {result.malignant_to_benign} malignant image(s) the reference sends to review "
                        f"go to benign, {allowed} allowed (reference sensitivity {_pct(sens_ref)} vs target "
                        f"{_pct(target_sensitivity)} on {n_mal} malignant: floor(margin x n) = {allowed})")
    if not result.checks["specificity_drop"]:
        problems.append(f"specificity {_pct(spec)} vs reference {_pct(spec_ref)} (drop "
                        f"{100 * result.specificity_drop:.1f} pp > "
                        f"{100 * tolerances.max_specificity_drop:.1f} pp allowed)")
    if not result.checks["flip_rate"]:
        problems.append(f"{flips} decision flips vs {reference} on {len(p_art)} images "
                        f"({100 * result.flip_rate:.1f} % > {100 * tolerances.max_flip_rate:.1f} % allowed)")
    if problems:
        result.status = "failed"
        result.message = (f"{name} REJECTED by the parity gate: " + "; ".join(problems)
                          + f"; flips: {directions}; max |p diff| {result.max_abs_diff:.3g}")
    else:
        result.message = (f"{name} passed: sensitivity {_pct(sens)} (reference {_pct(sens_ref)}), specificity "
                          f"{_pct(spec)} (reference {_pct(spec_ref)}), {flips} flip(s) on {len(p_art)} images "
                          f"({directions}; malignant to benign allowed: {allowed}), threshold {threshold:.4f}, "
                          f"max |p diff| {result.max_abs_diff:.3g}")
    return result


def unverified(name: str, reason: str) -> ParityResult:
    return ParityResult(artifact=name, status="unverified", message=f"{name} unverified: {reason}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"
