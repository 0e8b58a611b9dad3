"""The top diagnosis of a diagnosis head, for display only.

A model whose classes are more than the binary benign/malignant pair (e.g. the seven HAM10000
diagnoses) also says which class it finds most likely. That is shown beside each decision as
``top_dx``/``top_dx_p``; it never changes the decision, which stays ``p_malignant < threshold``
(p_malignant = the sum of the malignant classes' probabilities) with every input check passed.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

#: diagnosis codes (HAM10000 / ISIC) -> readable names, for display
DIAGNOSIS_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma (AK/SCC)",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}


def diagnosis_name(code: str) -> str:
    """The readable name of a class code; the code itself when it has none."""
    return DIAGNOSIS_NAMES.get(str(code).lower(), str(code))


def is_diagnosis_head(classes: Sequence[str]) -> bool:
    """True when the model's classes are more than the binary benign/malignant pair."""
    return len(classes) > 2


def top_diagnoses(probabilities: np.ndarray, classes: Sequence[str]) -> list[tuple[str, float] | tuple[None, None]]:
    """(class, probability rounded like p_malignant) of the most likely class, per row.

    (None, None) for a binary model, and for a row that does not match the classes or is not
    finite (that image goes to review/ for its out-of-range output anyway).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    empty: tuple[None, None] = (None, None)
    if probs.ndim != 2 or not is_diagnosis_head(classes) or probs.shape[1] != len(classes):
        return [empty] * (len(probs) if probs.ndim >= 1 else 0)
    out: list[tuple[str, float] | tuple[None, None]] = []
    for row in probs:
        if not np.all(np.isfinite(row)):
            out.append(empty)
            continue
        i = int(np.argmax(row))
        out.append((str(classes[i]), round(float(row[i]), 6)))
    return out


def head_summary(classes: Sequence[str], malignant_classes: Sequence[str]) -> dict[str, Any]:
    """What ``dermsort info --json`` says about the output head."""
    malignant = set(malignant_classes)
    return {"diagnosis_head": is_diagnosis_head(classes), "n_classes": len(classes),
            "classes": [{"code": c, "name": diagnosis_name(c), "malignant": c in malignant} for c in classes],
            "malignant_classes": list(malignant_classes),
            "p_malignant": "sum of the probabilities of: " + ", ".join(malignant_classes)}


# ---------------------------------------------------------------------------- compact validation lines

def _num(x: Any, pct: bool = False) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "n/a" if x is None else str(x)
    if isinstance(x, int) and not pct:
        return str(x)
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _ci(ci: Any, pct: bool = False) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f" [{_num(ci[0], pct)}, {_num(ci[1], pct)}]"
    return ""


def _figures(entry: Any) -> str:
    """One data set's figures (the keys the trainer writes); anything else shown as key=value."""
    if not isinstance(entry, dict):
        return str(entry)
    parts = []
    if "n_images" in entry or "n_malignant" in entry:
        parts.append(f"n={_num(entry.get('n_images'))} ({_num(entry.get('n_malignant'))} malignant)")
    for key, label in (("sensitivity", "sens"), ("specificity", "spec"), ("work_reduction", "work red."),
                       ("auc", "AUC")):
        if key in entry:
            parts.append(f"{label} {_num(entry[key], pct=key != 'auc')}{_ci(entry.get(key + '_ci'), key != 'auc')}")
    shown = {"n_images", "n_malignant", "sensitivity", "sensitivity_ci", "specificity", "specificity_ci",
             "work_reduction", "auc", "auc_ci"}
    parts += [f"{k}={_num(v) if not isinstance(v, (dict, list)) else v}" for k, v in entry.items() if k not in shown]
    return ", ".join(parts) or "-"


def _diagnosis(entry: Any) -> str:
    if not isinstance(entry, dict):
        return str(entry)
    parts = [f"sens {_num(entry.get('sensitivity'), pct=True)}{_ci(entry.get('sensitivity_ci'), True)}"]
    if "n" in entry:
        parts.append(f"n={_num(entry['n'])}")
    if "missed" in entry:
        parts.append(f"missed {_num(entry['missed'])}")
    parts += [f"{k}={v}" for k, v in entry.items() if k not in {"sensitivity", "sensitivity_ci", "n", "missed"}]
    return ", ".join(parts)


def validation_lines(threshold_basis: Any, per_dataset: Any, per_diagnosis: Any) -> list[tuple[str, str]]:
    """(label, text) lines for ``dermsort info``; none for what is empty or absent."""
    lines: list[tuple[str, str]] = []
    if isinstance(threshold_basis, dict) and threshold_basis:
        basis = threshold_basis
        head = str(basis.get("rule", "")) or "threshold basis"
        if basis.get("binding") is not None:
            head += f"; binding: {basis['binding']}"
        lines.append(("basis", head))
        sets = basis.get("sets")
        if isinstance(sets, dict):
            for name, entry in sets.items():
                if isinstance(entry, dict):
                    text = f"threshold {_num(entry.get('threshold'))}, {_num(entry.get('n_malignant'))} malignant"
                else:
                    text = str(entry)
                lines.append(("", f"  {name}: {text}"))
        rest = {k: v for k, v in basis.items() if k not in {"rule", "binding", "sets"}}
        if rest:
            lines.append(("", "  " + ", ".join(f"{k}={v}" for k, v in rest.items())))
    if isinstance(per_dataset, dict) and per_dataset:
        lines.append(("per dataset", ""))
        lines += [("", f"  {name}: {_figures(entry)}") for name, entry in per_dataset.items()]
    if isinstance(per_diagnosis, dict) and per_diagnosis:
        lines.append(("per diagnosis", ""))
        lines += [("", f"  {name}: {_diagnosis(entry)}") for name, entry in per_diagnosis.items()]
    return lines
