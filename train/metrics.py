"""Operating-point figures for a triage model: THE one implementation for the whole package.

train/, export/ (parity gate) and bench/ all take their Wilson intervals, AUCs, operating points and
threshold choice from here; ``tests/train/test_one_metrics_module.py`` fails if a second copy appears elsewhere.
The torch-free core (Wilson interval, threshold picker, confusion, per-diagnosis sensitivity) lives in
``dermsort.runtime.metrics`` so that the runtime's ``dermsort validate`` can use it without train/; it is
re-exported here unchanged.
Only numpy is imported at module level (no torch, no scikit-learn until a function needs it), so
export/ and bench/ can import this module cheaply.

Convention everywhere: an image goes to benign/ only when ``p_malignant < threshold``; sensitivity
is the share of malignant images sent to review, work reduction the share of all images sent to benign.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# the torch-free pieces live beside the runtime (dermsort validate uses them); re-exported here
from dermsort.runtime.metrics import (CI_METHOD, DIAGNOSIS_GROUPS, choose_threshold,  # noqa: F401
                                      clopper_pearson_ci, confusion, diagnosis_sensitivity, operating_point,
                                      proportion_ci, wilson_ci)


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
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Title": title})
    plt.close(fig)


def plot_confusion(path: str, report: dict[str, Any], title: str = "Decisions") -> None:
    """The 2x2 decision matrix (truth x benign/review) to a PNG; the malignant-sent-to-benign cell (the
    error a triage tool must not make) is framed in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cm = report["confusion"]
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=120)
    ax.imshow(grid, cmap="Blues")
    for (r, c), value in np.ndenumerate(grid):
        ax.text(c, r, str(value), ha="center", va="center", color="black" if value < grid.max() / 2 else "white")
    ax.set_xticks([0, 1], ["benign/", "review/"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.add_patch(Rectangle((-0.46, 0.54), 0.92, 0.92, fill=False, edgecolor="#d00000", linewidth=3))
    ax.text(0, 1.27, "malignant\nsent to benign", ha="center", va="center", color="#d00000", fontsize=7,
            fontweight="bold")
    ax.set_xlabel("decision")
    ax.set_ylabel("truth")
    full = f"{title}\n(threshold {report['threshold']:.3g})"
    ax.set_title(full, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Title": full})
    plt.close(fig)


# --------------------------------------------------------------------------- per set, per diagnosis

def large_sets(malignant: Sequence[int], groups: Sequence[str], min_malignant: int) -> list[str]:
    """The groups (data sets) with at least ``min_malignant`` malignant images, sorted by name."""
    y = np.asarray(malignant, dtype=int)
    g = np.asarray(groups)
    return [str(name) for name in sorted(set(g.tolist())) if int(y[g == name].sum()) >= min_malignant]


def set_aucs(malignant: Sequence[int], p_malignant: Sequence[float], groups: Sequence[str],
             min_malignant: int) -> dict[str, float | None]:
    """AUC inside each group with at least ``min_malignant`` malignant images (what the epoch is chosen by)."""
    y = np.asarray(malignant, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    g = np.asarray(groups)
    return {name: auc_score(y[g == name], p[g == name]) for name in large_sets(y, g, min_malignant)}


def choose_threshold_sets(malignant: Sequence[int], p_malignant: Sequence[float], groups: Sequence[str],
                          target_sensitivity: float, min_malignant: int = 50) -> tuple[float, dict[str, Any]]:
    """The largest threshold whose sensitivity reaches the target on EVERY group (data set) with at least
    ``min_malignant`` malignant images and on all images pooled; returns it with the basis it rests on."""
    y = np.asarray(malignant, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    g = np.asarray(groups)
    candidates = {"pooled": (choose_threshold(y, p, target_sensitivity), int(y.sum()))}
    for name in large_sets(y, g, min_malignant):
        candidates[name] = (choose_threshold(y[g == name], p[g == name], target_sensitivity), int(y[g == name].sum()))
    binding = min(candidates, key=lambda k: candidates[k][0])
    threshold = candidates[binding][0]
    basis = {"rule": f"largest threshold with sensitivity >= {target_sensitivity} on every validation set with "
                     f">= {min_malignant} malignant images and pooled",
             "target_sensitivity": target_sensitivity, "min_malignant": min_malignant,
             "sets": {k: {"n_malignant": n, "threshold": t} for k, (t, n) in candidates.items()},
             "binding": binding}
    return threshold, basis


def triage_report(malignant: Sequence[int], p_malignant: Sequence[float], datasets: Sequence[str], dx: Sequence[str],
                  threshold: float, *, pooled_sets: Sequence[str] = (), n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Every figure a model is judged by: pooled, per data set, and pooled over ``pooled_sets`` (the sets
    the threshold rests on), each with sensitivity per diagnosis. One implementation for train and evaluate."""
    y = np.asarray(malignant, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    g = np.asarray(datasets)
    d = np.asarray(dx)

    def one(mask: np.ndarray) -> dict[str, Any]:
        report = binary_report(y[mask], p[mask], threshold, n_boot=n_boot, seed=seed)
        report["per_diagnosis"] = diagnosis_sensitivity(d[mask], p[mask], threshold)
        return report

    result: dict[str, Any] = {"threshold": float(threshold), "pooled": one(np.ones(len(y), bool)),
                              "per_dataset": {str(s): one(g == s) for s in sorted(set(g.tolist()))}}
    chosen = [s for s in pooled_sets if s in set(g.tolist())]
    if chosen:
        result["pooled_sets"] = {"sets": list(chosen), **one(np.isin(g, chosen))}
    return result


def format_triage(report: dict[str, Any], title: str = "") -> str:
    """Readable lines for a ``triage_report``: pooled, the pooled basis sets, then each data set."""

    def dx_line(per_dx: dict[str, Any]) -> str:
        return "  per diagnosis: " + ", ".join(
            f"{k} {100 * v['sensitivity']:.1f}% (n={v['n']})" for k, v in per_dx.items() if v["n"])

    parts = [(f"{title}pooled: ", report["pooled"])]
    if "pooled_sets" in report:
        parts.append((f"{title}pooled {'+'.join(report['pooled_sets']['sets'])}: ", report["pooled_sets"]))
    parts += [(f"{title}{name}: ", sub) for name, sub in report["per_dataset"].items()]
    return "\n".join(format_report(sub, head) + "\n" + dx_line(sub["per_diagnosis"]) for head, sub in parts)


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float | None:
    """Share of dermoscopy images flagged when the threshold catches ``tpr`` of the OOD images."""
    if len(out_scores) == 0 or len(in_scores) == 0:
        return None
    t = np.quantile(out_scores, 1.0 - tpr, method="lower")
    return float((in_scores >= t).mean())
