"""The export report (Markdown + JSON): size, model-only latency here, parity, verdict, what ran where."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from dermsort.runtime.backends.base import create_backend
from dermsort.runtime.bundle import Artifact, Bundle

REPORT_MD = "export_report.md"
REPORT_JSON = "export_report.json"
LATENCY_BATCHES = (1, 16)


def host() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "system": platform.platform(),
            "python": platform.python_version()}


def measure_latency(bundle: Bundle, artifact: Artifact, images: np.ndarray, reps: int = 10) -> dict[str, Any]:
    """Model-only latency through the runtime backend: median ms per batch at batch 1 and 16 (real images)."""
    started = time.perf_counter()
    backend = create_backend(artifact.backend, bundle, artifact)
    backend.load()
    result: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 3), "reps": reps}
    try:
        for size in LATENCY_BATCHES:
            batch = np.ascontiguousarray(np.resize(images, (size, *images.shape[1:])), dtype=np.float32)
            backend.predict(batch)  # warm-up: allocations, kernel selection
            times = []
            # fewer repetitions for big batches: the figure is stable and 2 shared cores are precious
            for _ in range(max(2, reps if size == 1 else reps // 3)):
                start = time.perf_counter()
                backend.predict(batch)
                times.append((time.perf_counter() - start) * 1000)
            result[f"batch{size}_ms"] = round(statistics.median(times), 2)
            result[f"batch{size}_ms_per_image"] = round(statistics.median(times) / size, 2)
        result["backend"] = backend.describe()
    finally:
        backend.close()
    return result


def write(root: Path, data: dict[str, Any]) -> None:
    (root / REPORT_JSON).write_text(json.dumps(data, indent=2) + "\n")
    (root / REPORT_MD).write_text(markdown(data))


def _f(value: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _pp(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown(data: dict[str, Any]) -> str:
    h = data["host"]
    calib = data["calibration"]
    mix = calib.get("per_dataset") or {}
    lines = [f"# Export report: {data['model_id']}", "",
             f"- created {data['created']} from `{data['checkpoint']['path']}` (sha256 {data['checkpoint']['sha256'][:12]}..., "
             f"built with {data['checkpoint']['builder']})",
             f"- host: {h['cpu']}, {h['cores']} cores, {h['system']}",
             f"- calibration: {calib['images']} real images from {', '.join(calib['sources']) or 'n/a'}"
             + (f"; mix per data set: {', '.join(f'{k} {v}' for k, v in mix.items())}" if mix else "")
             + (f" ({calib['mix']})" if calib.get("mix") else "")]
    gate = data["parity"]
    if gate["ran"]:
        tol = gate["tolerances"]
        lines.append(f"- parity gate: {gate['n_images']} labelled images ({gate['n_malignant']} malignant) from "
                     f"{', '.join(gate['labelled'])} (split {gate['split']})")
        for name, counts in (gate.get("per_dataset") or {}).items():
            lines.append(f"  - {name}: {counts['n_images']} images, {counts['n_malignant']} malignant")
        target = gate.get("target_sensitivity")
        lines += [
            "- gate rules (every one must hold; numbers are fractions of the gate set, pp = percentage points):",
            f"  - (a) safety: sensitivity drop <= {_pp(tol['max_sensitivity_drop'])} pp, AND malignant images newly "
            f"sent to benign (reference review -> artifact benign) <= floor((reference sensitivity - target "
            f"{_pp(target)} %) x n_malignant)",
            f"  - (b) work: specificity drop <= {_pp(tol.get('max_specificity_drop'))} pp after threshold "
            "recalibration",
            f"  - (c) churn: decision flips, both directions, <= {_pp(tol['max_flip_rate'])} % of the images",
        ]
    else:
        lines.append(f"- parity gate: **did not run** ({gate['reason']}); derived artifacts are marked unverified")
    lines += ["", "| artifact | backend (ran on) | size MB | b1 ms | b16 ms/img | AUC | sens | spec | spec drop pp | "
              "flips | to benign | to review | malignant to benign (allowed) | benign to review | max abs dp | "
              "threshold | verdict |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for a in data["artifacts"]:
        p, lat = a.get("parity") or {}, a.get("latency") or {}
        ran = lat.get("backend", {})
        where = f"{a['backend']} ({ran.get('device', '?')})" if ran else a["backend"]
        allowed = p.get("malignant_to_benign_allowed")
        m2b = _f(p.get("malignant_to_benign"), "{}") + (f" ({allowed})" if allowed is not None else "")
        lines.append(
            f"| {a['name']} | {where} | {a['size_bytes'] / 1e6:.2f} | {_f(lat.get('batch1_ms'), '{:.2f}')} | "
            f"{_f(lat.get('batch16_ms_per_image'), '{:.2f}')} | {_f(p.get('auc'))} | {_f(p.get('sensitivity'))} | "
            f"{_f(p.get('specificity'))} | {_pp(p.get('specificity_drop'))} | {_f(p.get('flips'), '{}')} | "
            f"{_f(p.get('flips_to_benign'), '{}')} | {_f(p.get('flips_to_review'), '{}')} | {m2b} | "
            f"{_f(p.get('benign_to_review'), '{}')} | {_f(p.get('max_abs_diff'), '{:.2g}')} | "
            f"{a['threshold']:.4f} | {a['verdict']} |")
    empty = "| - " * 15
    for name, reason in data.get("skipped", {}).items():
        lines.append(f"| {name} {empty}| {reason} |")
    for name, reason in data.get("failed", {}).items():
        lines.append(f"| {name} {empty}| export failed: {reason} |")
    lines += ["", "Latency is model-only (preprocessed real images, no decoding), median of a few repetitions "
              "through the runtime backend on this host; `dermsort bench` measures end to end. Flips compare the "
              "artifact at its own (recalibrated) threshold with the reference at its threshold.", ""]
    messages = [a["parity"].get("message") for a in data["artifacts"] if a.get("parity", {}).get("message")]
    if messages:
        lines += ["## Parity", "", *[f"- {m}" for m in messages], ""]
    trt = [(a["name"], a["parity"]["tensorrt_compatibility"]) for a in data["artifacts"]
           if (a.get("parity") or {}).get("tensorrt_compatibility")]
    if trt:
        lines += ["## TensorRT readiness of the quantized ONNX", "",
                  f"Rules: {trt[0][1].get('rules', '')}.", ""]
        for name, result in trt:
            verdict = "passed" if result["passed"] else "FAILED: " + "; ".join(result["problems"])
            lines.append(f"- {name} (`{result.get('file', '')}`, opset {result.get('opset')}): {verdict}")
        lines.append("")
    if data.get("quantization"):
        lines += ["## Quantization", ""]
        for name, info in data["quantization"].items():
            shown = {k: v for k, v in info.items() if k != "tensorrt_compatibility"}
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        lines.append("")
    return "\n".join(lines)
