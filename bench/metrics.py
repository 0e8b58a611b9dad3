"""Operating figures of one set of decisions: AUC, sensitivity/specificity with Wilson CIs, work reduction,
and agreement with the reference's decisions. The formulas (Wilson interval, AUC) are dermsort.train.metrics's,
the package's one implementation; this module only counts the pipeline's own decisions."""

from __future__ import annotations

from typing import Any, Sequence

from dermsort.train.metrics import auc_score, wilson_ci


def operating_figures(labels: Sequence[int], decisions: Sequence[str], p_malignant: Sequence[float | None]) -> dict[str, Any]:
    """Sensitivity = malignant sent to review; specificity = benign sent to benign; work reduction = share benign.

    Decisions are the pipeline's own (an undecodable image is ``review``), so the figures are what a
    user of this artifact gets. AUC uses the images that produced a p_malignant.
    """
    labels = [int(x) for x in labels]
    review = [d != "benign" for d in decisions]
    pos = sum(labels)
    neg = len(labels) - pos
    tp = sum(1 for y, r in zip(labels, review) if y and r)
    tn = sum(1 for y, r in zip(labels, review) if not y and not r)
    scored = [(y, p) for y, p in zip(labels, p_malignant) if p is not None]
    return {
        "n_images": len(labels), "n_malignant": pos, "n_scored": len(scored),
        "auc": auc_score([y for y, _ in scored], [p for _, p in scored]) if scored else None,
        "sensitivity": tp / pos if pos else None, "sensitivity_ci95": wilson_ci(tp, pos),
        "specificity": tn / neg if neg else None, "specificity_ci95": wilson_ci(tn, neg),
        "missed_malignant": pos - tp,
        "work_reduction": (len(labels) - sum(review)) / len(labels) if labels else None,
    }


def agreement(decisions: Sequence[str], reference: Sequence[str], p_malignant: Sequence[float | None],
              reference_p: Sequence[float | None]) -> dict[str, Any]:
    """Share of identical decisions with the reference, the flips in each direction, and the largest |dp|."""
    if len(decisions) != len(reference):
        raise ValueError("decisions and reference differ in length")
    same = sum(1 for a, b in zip(decisions, reference) if a == b)
    to_benign = sum(1 for a, b in zip(decisions, reference) if a == "benign" and b != "benign")
    deltas = [abs(a - b) for a, b in zip(p_malignant, reference_p) if a is not None and b is not None]
    return {"agreement": same / len(reference) if reference else None,
            "agreement_ci95": wilson_ci(same, len(reference)),
            "flips_to_benign": to_benign, "flips_to_review": len(reference) - same - to_benign,
            "max_abs_dp": max(deltas) if deltas else None}
