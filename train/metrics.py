"""Operating-point figures for a triage model (scikit-learn based; bench/ imports these too).

Convention everywhere: an image goes to benign/ only when ``p_malignant < threshold``; sensitivity
is the share of malignant images sent to review, work reduction the share of all images sent to benign.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

CI_METHOD = "wilson"


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """Wilson score interval for a proportion; None when n == 0."""
    if n == 0:
        return None
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def clopper_pearson_ci(successes: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """Exact (Clopper-Pearson) interval for a proportion; None when n == 0."""
    if n == 0:
        return None
    from scipy.stats import beta

    alpha = 1 - confidence
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return [low, high]


def proportion_ci(successes: int, n: int, method: str = CI_METHOD) -> list[float] | None:
    return {"wilson": wilson_ci, "clopper-pearson": clopper_pearson_ci}[method](successes, n)


def auc_score(malignant: Sequence[int], p_malignant: Sequence[float]) -> float | None:
    """ROC AUC (scikit-learn), None when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(malignant, dtype=int)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, np.asarray(p_malignant, dtype=float)))


def bootstrap_auc_ci(malignant: Sequence[int], p_malignant: Sequence[float], n_boot: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> list[float] | None:
    """Percentile bootstrap CI of the AUC, resampling images within each class (stratified)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(malignant, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0 or len(neg) == 0:
        return None
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]
    aucs = np.empty(n_boot)
    for b in range(n_boot):
        take = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        aucs[b] = roc_auc_score(labels, p[take])
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(aucs, tail)), float(np.percentile(aucs, 100 - tail))]


def choose_threshold(malignant: Sequence[int], p_malignant: Sequence[float], target_sensitivity: float) -> float:
    """A threshold whose sensitivity on these images is >= target, as large as possible (p < threshold -> benign).

    Raises ValueError when there is no malignant image to calibrate on.
    """
    y = np.asarray(malignant, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    positives = np.sort(p[y == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("no malignant images to calibrate the threshold on")
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target sensitivity {target_sensitivity} is outside (0, 1]")
    needed = math.ceil(target_sensitivity * len(positives) - 1e-9)
    # the needed-th highest malignant score must stay caught (p >= threshold); anything above it loses one.
    # Sitting exactly on that score would let a 1e-7 difference between backends flip it to benign, so
    # take the middle of the gap down to the next lower score: the same decisions here, with a margin.
    lowest_caught = float(positives[needed - 1])
    below = p[p < lowest_caught]
    threshold = (lowest_caught + float(below.max())) / 2 if len(below) else lowest_caught / 2
    # a threshold of 0 would be rejected by the metadata schema; the smallest positive float keeps every image in review
    return max(threshold, float(np.nextafter(0.0, 1.0)))


def confusion(malignant: Sequence[int], p_malignant: Sequence[float], threshold: float) -> dict[str, int]:
    """tn/fp/fn/tp with 'positive' = sent to review (p >= threshold), via sklearn's confusion_matrix."""
    from sklearn.metrics import confusion_matrix

    y = np.asarray(malignant, dtype=int)
    review = (np.asarray(p_malignant, dtype=float) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, review, labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def binary_report(malignant: Sequence[int], p_malignant: Sequence[float], threshold: float, *, n_boot: int = 2000,
                  seed: int = 0, ci_method: str = CI_METHOD) -> dict[str, Any]:
    """Every operating figure at ``threshold``: sensitivity/specificity with CIs, work reduction, AUC with CI."""
    y = np.asarray(malignant, dtype=int)
    cm = confusion(y, p_malignant, threshold)
    n_pos, n_neg = cm["tp"] + cm["fn"], cm["tn"] + cm["fp"]
    n = n_pos + n_neg
    return {
        "n_images": n, "n_malignant": n_pos, "n_benign": n_neg, "threshold": float(threshold),
        "sensitivity": cm["tp"] / n_pos if n_pos else None,
        "sensitivity_ci": proportion_ci(cm["tp"], n_pos, ci_method),
        "specificity": cm["tn"] / n_neg if n_neg else None,
        "specificity_ci": proportion_ci(cm["tn"], n_neg, ci_method),
        "work_reduction": (cm["tn"] + cm["fn"]) / n if n else None,
        "missed_malignant": cm["fn"],
        "auc": auc_score(y, p_malignant),
        "auc_ci": bootstrap_auc_ci(y, p_malignant, n_boot=n_boot, seed=seed),
        "confusion": cm,
        "ci_method": f"{ci_method} 95% (proportions); stratified percentile bootstrap, {n_boot} resamples (AUC)",
    }


def per_group_reports(malignant: Sequence[int], p_malignant: Sequence[float], groups: Sequence[str], threshold: float,
                      **kw: Any) -> dict[str, dict[str, Any]]:
    """``binary_report`` for each value of ``groups`` (e.g. the data set of each image)."""
    y = np.asarray(malignant, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    g = np.asarray(groups)
    return {str(name): binary_report(y[g == name], p[g == name], threshold, **kw) for name in sorted(set(g.tolist()))}


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A few readable lines for the terminal."""

    def pct(value: float | None, ci: list[float] | None = None) -> str:
        if value is None:
            return "n/a"
        text = f"{100 * value:.1f}%"
        return text + (f" [{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]" if ci else "")

    auc = "n/a" if report["auc"] is None else f"{report['auc']:.3f}" + (
        f" [{report['auc_ci'][0]:.3f}-{report['auc_ci'][1]:.3f}]" if report["auc_ci"] else "")
    cm = report["confusion"]
    lines = [f"{title}n={report['n_images']} ({report['n_malignant']} malignant), threshold {report['threshold']:.4g}",
             f"  sensitivity {pct(report['sensitivity'], report['sensitivity_ci'])}  "
             f"specificity {pct(report['specificity'], report['specificity_ci'])}",
             f"  work reduction {pct(report['work_reduction'])}  AUC {auc}",
             f"  confusion: benign->benign {cm['tn']}, benign->review {cm['fp']}, "
             f"malignant->benign {cm['fn']}, malignant->review {cm['tp']}"]
    return "\n".join(lines)


def plot_roc(path: str, curves: dict[str, tuple[Sequence[int], Sequence[float]]], threshold: float | None = None,
             title: str = "ROC") -> None:
    """ROC curves (scikit-learn ``roc_curve``) to a PNG; the operating point is marked on the first curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for i, (name, (y, p)) in enumerate(curves.items()):
        y = np.asarray(y, dtype=int)
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, np.asarray(p, dtype=float))
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc_score(y, p):.3f}, n={len(y)})")
        if i == 0 and threshold is not None:
            cm = confusion(y, p, threshold)
            ax.plot(cm["fp"] / max(1, cm["fp"] + cm["tn"]), cm["tp"] / max(1, cm["tp"] + cm["fn"]), "o",
                    color="black", label=f"operating point (threshold {threshold:.3g})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity (benign sent to review)")
    ax.set_ylabel("sensitivity (malignant sent to review)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(path: str, report: dict[str, Any], title: str = "Decisions") -> None:
    """The 2x2 decision matrix (truth x benign/review) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = report["confusion"]
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=120)
    ax.imshow(grid, cmap="Blues")
    for (r, c), value in np.ndenumerate(grid):
        ax.text(c, r, str(value), ha="center", va="center", color="black" if value < grid.max() / 2 else "white")
    ax.set_xticks([0, 1], ["benign/", "review/"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set_xlabel("decision")
    ax.set_ylabel("truth")
    ax.set_title(f"{title} (threshold {report['threshold']:.3g})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
