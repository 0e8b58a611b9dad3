"""``dermsort bench``: every available backend x artifact of a bundle, measured and compared in one run.

Per (backend, artifact): model-only batch-1 latency p50/p95 and throughput per batch size (this
process), end-to-end images/s through the real Sorter in dry-run mode, cold start to first decision
and peak RSS (fresh processes, see worker.py); AUC, sensitivity/specificity with Wilson CIs and work
reduction at the artifact's own threshold; decision agreement with the FP32 ONNX reference. A naive
pipeline (full decode, batch 1, serial) runs in the same session so speed-ups are same-run ratios.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dermsort.runtime.backends.base import backend_status, create_backend, list_backends
from dermsort.runtime.bundle import Artifact, Bundle, load_bundle
from dermsort.runtime.engine import compatible, load_profile, save_profile, sorting_backends
from dermsort.runtime.errors import DermsortError
from dermsort.runtime.probe import LoadWatch
from dermsort.runtime.preprocess import preprocess_file

from . import metrics
from .data import LabelledImage, describe
from .machine import command_line, load_average, machine_info
from .measure import batch_throughput, median, model_latency, run_worker, warm_page_cache
from .naive import NaiveRunner, backend_runner, load_checkpoint_module, run_naive, torch_runner

log = logging.getLogger(__name__)

REPORT_SCHEMA = "dermsort-bench-report/1"
#: backends measured by default, in this order; torch only when the bundle holds a torch artifact
DEFAULT_ORDER = ("onnxruntime", "openvino", "tensorrt", "torch")


@dataclass
class BenchSettings:
    reps: int = 30
    warmup: int = 3
    e2e_reps: int = 3
    cold_reps: int = 3
    batch_size: int = 16
    workers: int | None = None
    threads: int | None = None
    min_agreement: float = 0.97
    #: also time a DermoSort-style pipeline (bench/dermosort.py; needs torch + torchvision)
    dermosort: bool = True
    #: up to this many images for the model-only timings (preprocessed once)
    timing_images: int = 32


def reference_artifact(bundle: Bundle) -> Artifact:
    for art in bundle.artifacts:
        if art.path == bundle.reference:
            return art
    for art in bundle.artifacts:
        if art.format == "onnx" and art.precision == "fp32":
            return art
    raise DermsortError(f"bundle {bundle.root} has no FP32 ONNX reference artifact")


def plan(bundle: Bundle, backends: list[str] | None) -> tuple[list[tuple[str, Artifact]], list[dict[str, str]]]:
    """(backend, artifact) pairs to measure, reference first; and what was skipped and why."""
    # the torch reference cannot sort (it is the naive baseline below), so it gets no row of its own
    registered = [b for b in list_backends() if b in sorting_backends()]
    names = [b for b in DEFAULT_ORDER if b in registered] + [b for b in registered if b not in DEFAULT_ORDER]
    if backends:
        unknown = [b for b in backends if b not in registered]
        if unknown:
            raise DermsortError(f"unknown backend(s) {', '.join(unknown)}; choose from: all, {', '.join(names)}")
        names = [b for b in names if b in backends]
    ref = reference_artifact(bundle)
    pairs: list[tuple[str, Artifact]] = [("onnxruntime", ref)]
    skipped = []
    for name in names:
        arts = [a for a in bundle.artifacts if compatible(name, a)]
        if not arts:
            skipped.append({"backend": name, "reason": "no artifact in the bundle for this backend"})
            continue
        ok, why = backend_status(name)
        if not ok:
            skipped.append({"backend": name, "reason": why})
            continue
        pairs += [(name, a) for a in arts if (name, a.name) != ("onnxruntime", ref.name)]
    return pairs, skipped


def _log(echo: Callable[[str], None] | None, text: str) -> None:
    if echo is not None:
        echo(text)


def _predictable_tensors(images: list[LabelledImage], bundle: Bundle, limit: int) -> np.ndarray:
    spec = bundle.metadata.preprocess
    return np.stack([preprocess_file(im.path, spec)[0] for im in images[:limit]])


def _model_only(backend: Any, tensors: np.ndarray, settings: BenchSettings) -> dict[str, Any]:
    latency = model_latency(backend.predict, tensors, settings.warmup, settings.reps)
    per_batch = batch_throughput(backend.predict, tensors, settings.warmup, settings.reps,
                                 max_batch=getattr(backend, "max_batch", 32))
    best = max(per_batch, key=per_batch.get)
    return {"latency_p50_ms": latency["p50_ms"], "latency_p95_ms": latency["p95_ms"],
            "latency_calls": latency["calls"], "throughput_by_batch": {str(k): v for k, v in per_batch.items()},
            "best_batch": best, "best_batch_images_per_s": per_batch[best]}


def _worker_spec(bundle: Bundle, backend: str, art: Artifact, files: list[str], settings: BenchSettings,
                 mode: str) -> dict[str, Any]:
    return {"bundle": str(bundle.root), "backend": backend, "artifact": art.name, "files": files, "mode": mode,
            "batch_size": settings.batch_size, "workers": settings.workers, "threads": settings.threads,
            "warmup": 1 if settings.warmup else 0, "reps": settings.e2e_reps}


def _fresh_process(bundle: Bundle, backend: str, art: Artifact, files: list[str], settings: BenchSettings) -> dict[str, Any]:
    """One full-workload process (cold start #1, e2e passes, peak RSS) + (cold_reps - 1) cold-only ones."""
    run = run_worker(_worker_spec(bundle, backend, art, files, settings, "run"))
    colds = [run["cold_start_s"]]
    breakdowns = [run["marks"]]
    for _ in range(max(0, settings.cold_reps - 1)):
        cold = run_worker(_worker_spec(bundle, backend, art, files[:1], settings, "cold"))
        colds.append(cold["cold_start_s"])
        breakdowns.append(cold["marks"])
    n = len(files)
    return {
        "e2e_images_per_s": n / median(run["e2e_seconds"]), "e2e_seconds": run["e2e_seconds"],
        "cold_start_s": median(colds), "cold_start_runs_s": colds,
        "cold_start_breakdown_s": {k: median([b[k] for b in breakdowns]) for k in breakdowns[0]},
        "peak_rss_mb": run["peak_rss_mb"], "rss_after_first_decision_mb": run["rss_after_first_decision_mb"],
        "backend_info": run["backend"], "decisions": run["decisions"],
    }


def _baseline(bundle: Bundle, ref: Artifact, checkpoint: Path | None, threads: int | None) -> NaiveRunner:
    if checkpoint is not None:
        module, meta = load_checkpoint_module(checkpoint)
        return torch_runner(module, meta, source=f"checkpoint {checkpoint.name}")
    torch_arts = [a for a in bundle.artifacts if a.format == "torch"]
    if torch_arts and backend_status("torch")[0]:
        bundle.verify(torch_arts[0])
        backend = create_backend("torch", bundle, torch_arts[0], threads=threads).load()
        return backend_runner(backend, f"naive: PyTorch eager FP32 (bundle artifact {torch_arts[0].name}), "
                                       "full decode, batch 1")
    bundle.verify(ref)
    backend = create_backend("onnxruntime", bundle, ref, threads=threads).load()
    return backend_runner(backend, f"naive: reference ONNX {ref.name} on onnxruntime, full decode (no draft), batch 1, "
                                   "serial (no torch checkpoint given, so not PyTorch eager)")


def run_bench(bundle_path: str | Path, images: list[LabelledImage], settings: BenchSettings,
              backends: list[str] | None = None, checkpoint: Path | None = None, write_profile: bool = True,
              echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure everything and return the report dict (written by report.write_reports)."""
    bundle, _ = load_bundle(bundle_path)
    pairs, skipped = plan(bundle, backends)
    ref = reference_artifact(bundle)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = load_average()
    load_watch = LoadWatch().start()
    paths = [im.path for im in images]
    files = [str(p) for p in paths]
    labels = {str(im.path): im.malignant for im in images}
    warm_page_cache(paths)
    tensors = _predictable_tensors(images, bundle, settings.timing_images)
    rows: list[dict[str, Any]] = []

    for backend_name, art in pairs:
        _log(echo, f"bench {backend_name}/{art.name} ...")
        row: dict[str, Any] = {"kind": "artifact", "backend": backend_name, "artifact": art.name,
                               "precision": art.precision, "format": art.format, "size_mb": art.size_bytes / 2**20,
                               "threshold": art.threshold, "accepted": bool(art.accepted or art.override),
                               "reference": (backend_name, art.name) == ("onnxruntime", ref.name), "error": ""}
        try:
            bundle.verify(art)
            backend = create_backend(backend_name, bundle, art, threads=settings.threads).load()
            try:
                row.update(_model_only(backend, tensors, settings))
                row["device"] = backend.describe().get("device")
            finally:
                backend.close()
            row.update(_fresh_process(bundle, backend_name, art, files, settings))
        except Exception as exc:  # one broken artifact must not end the run; it is reported, not ranked
            log.debug("bench of %s/%s failed", backend_name, art.name, exc_info=True)
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            _log(echo, f"  failed: {row['error']}")
        rows.append(row)

    # the naive pipeline, same images, same session
    _log(echo, "bench naive baseline ...")
    base: dict[str, Any] = {"kind": "baseline", "backend": "", "artifact": ref.name, "precision": "fp32", "error": "",
                            "reference": False, "accepted": False}
    try:
        runner = _baseline(bundle, ref, checkpoint, settings.threads)
        try:
            base.update({"backend": runner.engine, "label": runner.label, "threshold": runner.threshold})
            latency = model_latency(runner.predict, tensors, settings.warmup, settings.reps)
            base.update({"latency_p50_ms": latency["p50_ms"], "latency_p95_ms": latency["p95_ms"],
                         "latency_calls": latency["calls"], "best_batch": 1})
            run_naive(runner, paths[:1])  # warm-up
            passes = [run_naive(runner, paths) for _ in range(max(1, settings.e2e_reps))]
            seconds = [s for s, _ in passes]
            base.update({"e2e_seconds": seconds, "e2e_images_per_s": len(paths) / median(seconds),
                         "best_batch_images_per_s": len(paths) / median(seconds), "decisions": passes[-1][1]})
        finally:
            runner.close()
    except Exception as exc:
        base["error"] = f"{type(exc).__name__}: {exc}"[:300]
        _log(echo, f"  failed: {base['error']}")
    rows.append(base)

    dermosort = _dermosort_row(paths, settings, echo) if settings.dermosort else None
    _score(rows, labels, settings.min_agreement)
    for row in rows:
        if dermosort and dermosort.get("e2e_images_per_s") and row.get("e2e_images_per_s"):
            row["speedup_e2e_vs_dermosort"] = row["e2e_images_per_s"] / dermosort["e2e_images_per_s"]
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA, "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(), "machine": machine_info(),
        "load_average_before": load_before, "load_average_after": load_average(),
        "settings": asdict(settings) | {"e2e_pipeline": "runtime Sorter, dry_run=True, warm page cache",
                                        "timing_clock": "time.perf_counter"},
        "bundle": {"path": str(bundle.root), "model_id": bundle.model_id, "architecture": bundle.metadata.architecture,
                   "input_size": bundle.metadata.preprocess.input_size, "reference": ref.name,
                   "development_model": bundle.metadata.development_model},
        "data": describe(images), "rows": rows, "skipped": skipped, "profile": None, "dermosort_style": dermosort,
    }
    if write_profile:
        ranking = profile_ranking(rows, bundle)
        if ranking:
            load = load_watch.finish()
            path = save_profile(bundle, ranking, source="bench", load=load)
            report["profile"] = {"path": str(path), "ranking": ranking, "load": load}
            kept = load_profile().get("models", {}).get(bundle.model_id) or {}
            first = (kept.get("ranking") or ranking)[0]
            note = ""
            if load.get("noisy") and (kept.get("noisy_bench") or {}).get("load") == load:
                note = (f" (this bench ran on a busy machine, load {load.get('loadavg')}, others "
                        f"{load.get('others_per_cpu')} per CPU: the quiet profile was kept)")
                report["profile"]["kept_quiet_profile"] = True
            _log(echo, f"machine profile: {path} (auto -> {first['backend']}/{first['artifact']}){note}")
    return report


def _dermosort_row(paths: list[Path], settings: BenchSettings, echo: Callable[[str], None] | None) -> dict[str, Any]:
    """The DermoSort-style pipeline (EfficientNet-B4 @ 256, torch eager, batch 1) on the same images."""
    _log(echo, "bench DermoSort-style baseline ...")
    try:
        from .dermosort import SIZE, decoder_name, run_in_process

        seconds = run_in_process(paths, settings.e2e_reps)
    except ImportError as exc:
        return {"error": f"not measured: {exc} (pip install \"dermsort[train]\")"}
    return {"label": f"DermoSort-style: EfficientNet-B4 @ {SIZE} px (random weights), PyTorch eager FP32, autograd on, "
                     f"{decoder_name()}, batch 1, serial", "e2e_seconds": seconds,
            "e2e_images_per_s": len(paths) / median(seconds)}


def _score(rows: list[dict[str, Any]], labels: dict[str, int], min_agreement: float) -> None:
    ref_row = next((r for r in rows if r.get("reference") and "decisions" in r), None)
    ref_by_file = {d["file"]: d for d in ref_row["decisions"]} if ref_row else {}
    base = next((r for r in rows if r["kind"] == "baseline" and r.get("e2e_images_per_s")), None)
    for row in rows:
        if "decisions" not in row:
            row["passed"] = False
            continue
        decisions = row["decisions"]
        files = [d["file"] for d in decisions]
        missing = set(labels) - set(files)
        if missing:
            row["error"] = row.get("error") or f"{len(missing)} image(s) without a decision"
        row.update(metrics.operating_figures([labels[f] for f in files], [d["decision"] for d in decisions],
                                             [d["p_malignant"] for d in decisions]))
        if ref_by_file:
            ref = [ref_by_file[f] for f in files]
            row.update(metrics.agreement([d["decision"] for d in decisions], [r["decision"] for r in ref],
                                         [d["p_malignant"] for d in decisions], [r["p_malignant"] for r in ref]))
        if base is not None and row.get("e2e_images_per_s"):
            row["speedup_e2e_vs_naive"] = row["e2e_images_per_s"] / base["e2e_images_per_s"]
        # the export's parity gate decides acceptance; the bench only takes an artifact out of auto's ranking
        # when its disagreement with the reference here is significantly worse than min_agreement (the Wilson
        # upper bound of its agreement below it), not on the noise of a few hundred images
        upper = (row.get("agreement_ci95") or [None, None])[1]
        row["passed"] = bool(row["kind"] == "artifact" and not row["error"] and row["accepted"]
                             and row.get("agreement") is not None
                             and (upper if upper is not None else row["agreement"]) >= min_agreement)


def profile_ranking(rows: list[dict[str, Any]], bundle: Bundle | None = None) -> list[dict[str, Any]]:
    """Fastest first by end-to-end images/s, only artifacts that passed; what ``--backend auto`` reads.

    With ``bundle``, only each artifact on the backend its parity gate ran it on (what ``auto`` may run).
    """
    passed = [r for r in rows if r.get("passed") and r["backend"] != "torch" and r.get("e2e_images_per_s")]
    if bundle is not None:
        gate = {a.name: a.backend for a in bundle.artifacts}
        passed = [r for r in passed if gate.get(r["artifact"]) == r["backend"]]
    passed.sort(key=lambda r: -r["e2e_images_per_s"])
    return [{"backend": r["backend"], "artifact": r["artifact"], "precision": r["precision"],
             "images_per_s": round(r["e2e_images_per_s"], 2), "agreement": round(r["agreement"], 4)} for r in passed]
