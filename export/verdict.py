"""The parity gate's verdict on a bundle's artifacts: run the gate, then keep, override or reject each one.

``parity.py`` compares one artifact with the reference (numbers and a pass/fail per rule); this module
runs that comparison over every candidate of a bundle (``run_gate``) and applies the results
(``apply_verdicts``: thresholds recalibrated, rejected artifacts' files removed). ``export_bundle`` and
``export_engines`` both go through it, so an artifact is judged the same way wherever it was built.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from dermsort.runtime.bundle import Artifact, Bundle

from . import formats, parity

Say = Callable[[str], None]

#: the gate's rules in words, stored with the numbers in the manifest and printed in the report
GATE_RULES = (
    "(a) safety: sensitivity >= reference - max_sensitivity_drop AND malignant_to_benign (reference review -> "
    "artifact benign) <= floor((sensitivity_reference - target_sensitivity) x n_malignant); "
    "(b) work: specificity >= reference - max_specificity_drop, at the artifact's recalibrated threshold; "
    "(c) churn: flips (both directions) <= max_flip_rate x n_images")


def target_sensitivity(metadata: Any) -> float:
    """The sensitivity the model was validated for (the safety rule measures the reference's margin above it)."""
    value = getattr(getattr(metadata, "validation", None), "target_sensitivity", None)
    return float(value) if value else parity.DEFAULT_TARGET_SENSITIVITY


def run_gate(bundle: Bundle, reference: Artifact, candidates: list[Artifact], tensors: np.ndarray,
             malignant: np.ndarray, tolerances: parity.Tolerances, say: Say,
             ood_tensors: np.ndarray | None = None) -> dict[str, parity.ParityResult]:
    """The parity gate. A gated model's not-dermoscopy decisions are compared too, on the labelled images
    and ``ood_tensors`` (non-dermoscopy images): see parity.add_gate_parity."""
    target = target_sensitivity(bundle.metadata)
    gated = bundle.metadata.gate.enabled
    every = tensors if ood_tensors is None or not gated else np.concatenate([tensors, ood_tensors])
    n = len(tensors)
    p_ref, g_ref, ref_backend = parity.predict_scores(bundle, reference, every)
    p_ref = p_ref[:n]
    results = {reference.name: parity.reference_result(reference.name, p_ref, malignant, reference.threshold,
                                                       ref_backend, target_sensitivity=target)}
    say(results[reference.name].message)
    for art in candidates:
        p_art, g_art, described = parity.predict_scores(bundle, art, every)
        row = next((t for t in formats.TARGETS if t.name == art.name), None)
        results[art.name] = parity.add_gate_parity(
            parity.compare(art.name, p_art[:n], p_ref, malignant, reference.threshold, reference=reference.name,
                           tolerances=tolerances, atol=row.atol if row else None, backend=described,
                           target_sensitivity=target),
            g_art, g_ref, bundle.metadata.gate.threshold)
        say(results[art.name].message)
    return results


def apply_verdicts(bundle_root: Path, artifacts: list[Artifact], results: dict[str, parity.ParityResult] | None,
                   allow_parity_failure: bool, unverified_reason: str,
                   say: Say) -> tuple[list[Artifact], list[dict[str, Any]]]:
    """Apply verdicts: thresholds and parity onto artifacts; rejected ones leave the bundle."""
    kept, rejected = [], []
    remove: list[Artifact] = []
    for art in artifacts:
        if results is None:
            if art.name == formats.REFERENCE:
                kept.append(art)
                continue
            result = parity.unverified(art.name, unverified_reason)
            art.parity, art.accepted = result.to_dict(), False
            # usable (the runtime runs accepted-or-override artifacts), but never presented as verified
            art.override = f"unverified: {unverified_reason}"
            kept.append(art)
            continue
        result = results[art.name]
        art.parity = result.to_dict()
        if result.threshold is not None:
            art.threshold = float(result.threshold)
        if result.passed:
            art.accepted = True
            kept.append(art)
        elif allow_parity_failure:
            art.accepted = False
            art.override = f"--allow-parity-failure: {result.message}"
            say(f"WARNING: keeping {art.name} despite failing the parity gate (--allow-parity-failure)")
            kept.append(art)
        else:
            remove.append(art)
            rejected.append({"name": art.name, "path": art.path, "precision": art.precision, "backend": art.backend,
                             "size_bytes": art.size_bytes, "sha256": art.sha256, "reason": result.message,
                             "parity": art.parity})
    # a rejected artifact's files go, unless a kept one uses them too (openvino-bf16 runs the FP16 IR)
    in_use = {rel for art in kept for rel in (art.path, *art.extra_files)}
    for art in remove:
        remove_files(bundle_root, art, keep=in_use)
    return kept, rejected


def remove_files(root: Path, art: Artifact, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Delete an artifact's files from the bundle folder, except those in ``keep``."""
    for rel in [art.path, *art.extra_files]:
        if rel in keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            (root / rel).unlink()


def verdict(art: Artifact) -> str:
    """The word the report shows for an artifact kept in the bundle."""
    if art.accepted:
        return "accepted"
    return "OVERRIDE (parity failed)" if art.override.startswith("--allow") else "unverified"


def report_rows(kept: Iterable[Artifact], rejected: Iterable[dict[str, Any]],
                latency: dict[str, Any]) -> list[dict[str, Any]]:
    """One report row per artifact kept in the bundle, then per artifact the gate rejected."""
    rows = [{"name": art.name, "backend": art.backend, "precision": art.precision, "path": art.path,
             "size_bytes": art.size_bytes, "threshold": art.threshold, "verdict": verdict(art),
             "parity": art.parity, "latency": latency.get(art.name, {}), "built_for": art.built_for} for art in kept]
    rows += [{"name": item["name"], "backend": item["backend"], "precision": item["precision"],
              "path": item["path"], "size_bytes": item["size_bytes"],
              "threshold": item["parity"].get("threshold") or 0.0, "verdict": "REJECTED (not in bundle)",
              "parity": item["parity"], "latency": latency.get(item["name"], {})} for item in rejected]
    return rows
