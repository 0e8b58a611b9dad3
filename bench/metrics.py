"""Operating figures of one set of decisions: AUC, sensitivity/specificity with Wilson CIs, work reduction,
and agreement with the reference's decisions."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (sound at 0 and n, unlike the normal interval)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def auc(labels: Sequence[int], p_malignant: Sequence[float]) -> float | None:
    """ROC AUC from scikit-learn; None when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2:
        return None
    return float(roc_auc_score(labels, np.asarray(p_malignant, dtype=np.float64)))


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
        "auc": auc([y for y, _ in scored], [p for _, p in scored]) if scored else None,
        "sensitivity": tp / pos if pos else None, "sensitivity_ci95": wilson(tp, pos),
        "specificity": tn / neg if neg else None, "specificity_ci95": wilson(tn, neg),
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
            "flips_to_benign": to_benign, "flips_to_review": len(reference) - same - to_benign,
            "max_abs_dp": max(deltas) if deltas else None}
