"""``export_bundle``: checkpoint -> verified bundle; ``export_engines``: add TensorRT engines on the device.

Data path: checkpoint -> FP32 ONNX reference (checked against torch) -> derived artifacts (FP16,
INT8, OpenVINO IR, TensorRT) -> parity gate on labelled images through the real runtime backends ->
latency -> manifest + report, all in a temporary folder beside the output that replaces the old
bundle by rename only when everything is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dermsort import __version__
from dermsort.runtime.bundle import Bundle, load_bundle, sha256_file, write_manifest
from dermsort.runtime.errors import DermsortError

from . import calibration, formats, parity, report, seal, trt_compat
from .bundle_io import _check_out, _locked, recover, swap_in
from .onnx_export import ExportError
from .verdict import GATE_RULES, Say, apply_verdicts, report_rows, run_gate, target_sensitivity

log = logging.getLogger(__name__)


def _versions() -> dict[str, str]:
    import importlib

    found = {"dermsort": __version__}
    for name in ("torch", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt"):
        try:
            found[name] = str(importlib.import_module(name).__version__)
        except Exception:
            continue
    return found


def _check_inputs(spec: Any, n: int = 8) -> np.ndarray:
    """Seeded random RGB images through the runtime's own normalisation: inputs in the model's range for
    the ONNX-vs-torch check when an FP32/FP16-only export was given no images at all."""
    from PIL import Image

    from dermsort.runtime.preprocess import to_array

    rng = np.random.default_rng(0)
    size = spec.input_size
    return np.stack([to_array(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB"), spec)
                     for _ in range(n)])


def _check_logits(model: Any, batch: np.ndarray) -> None:
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(batch[:8]))).numpy()
    if out.ndim != 2:
        raise ExportError(f"the model returns shape {out.shape}; expected (batch, classes) logits")
    if np.all(out >= 0) and np.all(out <= 1) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        # softmax of probabilities squeezes every p towards 1/n: thresholds would silently mean nothing
        raise ExportError("the model already outputs probabilities; the checkpoint contract is logits "
                          "(build_model must not end in softmax)")


# ----------------------------------------------------------------------------- export_bundle

def export_bundle(checkpoint: str | os.PathLike, out: str | os.PathLike,
                  to: str | Iterable[str] = formats.TOOLKITS, precisions: str | Iterable[str] = formats.PRECISIONS,
                  calib: str | os.PathLike | Iterable[str | os.PathLike] = (),
                  labelled: str | os.PathLike | Iterable[str | os.PathLike] = (),
                  allow_parity_failure: bool = False, calib_count: int = 128, labelled_split: str = calibration.GATE_SPLIT,
                  accuracy_control: str = "off", tolerances: parity.Tolerances = parity.Tolerances(),
                  latency_reps: int = 10, say: Say | None = None,
                  sign_key: str | os.PathLike | None = None, ood: str | os.PathLike | None = None) -> Bundle:
    """Export a checkpoint into a verified bundle at ``out`` (replacing any bundle there) and return it.

    ``calib``: folders of images and/or labels.csv files (their train split) for INT8 calibration.
    ``labelled``: labels.csv files for the parity gate (their ``labelled_split`` rows); default: the
    ``labelled_split`` rows of CSV calibration sources. Without any, the gate does not run and derived
    artifacts are marked unverified. Rejected artifacts are left out unless ``allow_parity_failure``.
    ``sign_key``: an ed25519 private key (`dermsort keygen`) that signs every file of the new bundle.
    ``ood``: a folder with ood.csv (non-dermoscopy images); a gated model's parity gate also compares the
    not-dermoscopy decisions of every artifact on its ``labelled_split`` images.
    """
    say = say or log.info
    toolkits = formats.parse_list(list(to) if not isinstance(to, str) else to, formats.TOOLKITS, "target (--to)")
    precs = formats.parse_list(list(precisions) if not isinstance(precisions, str) else precisions,
                               formats.PRECISIONS, "precision")
    calib_sources = [calib] if isinstance(calib, (str, os.PathLike)) else list(calib)
    labelled_csvs = [labelled] if isinstance(labelled, (str, os.PathLike)) else list(labelled)
    out = Path(os.path.abspath(os.path.expanduser(out)))
    targets = formats.select(toolkits, precs)
    if sign_key is not None:  # a bad key fails now, not after a long export
        from dermsort.runtime.signing import load_private_key

        load_private_key(sign_key)

    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    metadata = replace(ckpt.metadata, output="probabilities", input_name="input", output_name="probabilities")
    spec = metadata.preprocess
    say(f"checkpoint {checkpoint}: {metadata.architecture}, classes {metadata.classes}, threshold "
        f"{metadata.threshold:.4f} (built with {ckpt.builder})")

    gate_rows, gate_csvs = calibration.gate_set(labelled_csvs, calib_sources, labelled_split)
    if labelled_csvs and not gate_rows:
        raise DermsortError(f"no {labelled_split!r} rows in {', '.join(map(str, labelled_csvs))}")
    int8 = [t.name for t in targets if t.precision == "int8"]
    if int8 and not calib_sources:
        raise DermsortError(f"--calib is required for INT8 ({', '.join(int8)}): real images to calibrate on; "
                            "an FP32/FP16-only export (--precision fp32,fp16) needs none")
    calib_files = (calibration.calibration_files(calib_sources, calib_count, exclude=[r.path for r in gate_rows])
                   if calib_sources else [])
    say(f"preprocessing {len(calib_files)} calibration images" + (f" and {len(gate_rows)} labelled images"
                                                                   if gate_rows else ""))
    if calib_files:
        calib_tensors, calib_kept = calibration.load_tensors(calib_files, spec, skip_concerns=True)
        calib_files = [calib_files[i] for i in calib_kept]  # what calibrated, for the manifest's mix per data set
    gate_tensors = gate_labels = None
    gate_datasets: dict[str, dict[str, int]] = {}
    if gate_rows:
        gate_tensors, kept = calibration.load_tensors([r.path for r in gate_rows], spec, skip_concerns=False)
        gate_labels = np.asarray([gate_rows[i].malignant for i in kept], dtype=int)
        gate_datasets = calibration.per_dataset(gate_rows[i] for i in kept)
        if not 0 < gate_labels.sum():
            raise DermsortError("the labelled gate set has no malignant image: sensitivity cannot be checked")
    ood_tensors = None
    if ood is not None and metadata.gate.enabled:
        from dermsort.runtime.ood import read_ood

        ood_rows = read_ood(ood, labelled_split)
        ood_tensors, _ = calibration.load_tensors([Path(r["path"]) for r in ood_rows], spec, skip_concerns=False)
        say(f"{len(ood_tensors)} non-dermoscopy {labelled_split} images for the not-dermoscopy gate's parity")
    elif metadata.gate.enabled and gate_rows:
        say("note: no --ood images: the not-dermoscopy gate's parity is checked on the labelled images only")
    if not calib_files:
        # no INT8: the images only feed the ONNX-vs-torch check (and latency); labelled ones if given
        calib_tensors = gate_tensors[:32] if gate_tensors is not None else _check_inputs(spec)
        say("no --calib images: the ONNX-vs-torch check runs on " + (
            f"{len(calib_tensors)} labelled images" if gate_tensors is not None
            else f"{len(calib_tensors)} seeded random images (pass --calib or --labelled for real ones)"))
    _check_logits(ckpt.model, calib_tensors)

    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        _check_out(out)
        recover(out, say)
        work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
        try:
            _build(ckpt, metadata, targets, work, calib_tensors, calib_files, calib_sources,
                   gate_tensors, gate_labels, gate_csvs, labelled_split, allow_parity_failure,
                   accuracy_control, tolerances, latency_reps, say, gate_datasets, ood_tensors)
            _verification_set(work, [r.path for r in gate_rows] or list(calib_files), say)
            if sign_key is not None:
                from dermsort.runtime.signing import sign_bundle

                say(f"signed every file of the bundle with key {sign_bundle(work, sign_key)}")
            swap_in(work, out)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    say(f"bundle written: {out}")
    return load_bundle(out)[0]


def _verification_set(bundle_dir: Path, images: list[Any], say: Say) -> None:
    """Ship a verification set with every exported bundle (``export-engines`` checks TensorRT engines against
    it on the device, without labels): the smallest of the given real images, so the bundle stays small."""
    from . import verify_set

    if not images:
        say("no verification set: the export was given no real images (engines built later stay unverified "
            "unless `export-engines --labelled` or `--verify-images` is used)")
        return
    # images small enough that any 24 of them fit the set's size cap (1 MB), else the smallest ones
    per_image = verify_set.DEFAULT_MAX_BYTES // verify_set.DEFAULT_COUNT
    by_size = sorted((Path(p) for p in images), key=lambda p: p.stat().st_size)
    small = [p for p in by_size if p.stat().st_size <= per_image]
    try:
        verify_set.build(bundle_dir, small if len(small) >= 4 * verify_set.DEFAULT_COUNT else by_size[:400], say=say)
    except DermsortError as exc:
        say(f"no verification set: {exc}")


def _build(ckpt: Any, metadata: Any, targets: list[formats.Target], work: Path, calib_tensors: np.ndarray,
           calib_files: list[Path], calib_sources: list[Any], gate_tensors: np.ndarray | None,
           gate_labels: np.ndarray | None, gate_csvs: list[str], labelled_split: str, allow_parity_failure: bool,
           accuracy_control: str, tolerances: parity.Tolerances, latency_reps: int, say: Say,
           gate_datasets: dict[str, dict[str, int]] | None = None, ood_tensors: np.ndarray | None = None) -> Bundle:
    from . import onnx_export, tensorrt_export

    reference = formats.target(formats.REFERENCE)
    ref_path = work / reference.path
    say("exporting the FP32 ONNX reference")
    reference_check = onnx_export.export_reference(ckpt.model, metadata, ref_path, calib_tensors)
    say(f"  onnx.checker passed; ONNX Runtime vs torch max |p diff| {reference_check['torch_max_abs_diff']:.2e} "
        f"(atol {reference_check['torch_atol']:.0e})")
    artifacts = [reference.artifact(work, metadata.threshold)]
    artifacts[0].parity = {"torch_check": reference_check}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    quantization: dict[str, Any] = {}
    build_facts: dict[str, Any] = {}
    job = formats.BuildJob(work=work, reference=ref_path, metadata=metadata, calib_tensors=calib_tensors,
                           labelled=(gate_tensors, gate_labels) if gate_tensors is not None else None,
                           accuracy_control=accuracy_control, tolerances=tolerances,
                           target_sensitivity=target_sensitivity(metadata), say=say)
    readiness: dict[Any, tuple[bool, str]] = {}  # each readiness check runs once per export

    for row in targets[1:]:
        build, ready = formats.builder(row)
        if ready is not None:
            if ready not in readiness:
                readiness[ready] = ready()
            ok, why = readiness[ready]
            if not ok:
                skipped[row.name] = f"skipped: {why}"
                say(f"{row.name}: {skipped[row.name]}")
                continue
        say(f"exporting {row.name}")
        started = time.perf_counter()
        try:
            built = build(job, row) or formats.Built()
            if built.quantization is not None:
                quantization[row.name] = built.quantization
            if built.build is not None:
                build_facts[row.name] = built.build
            artifacts.append(row.artifact(work, metadata.threshold, **built.artifact))
            build_facts.setdefault(row.name, {})["seconds"] = round(time.perf_counter() - started, 1)
        except formats.Skip as exc:  # cannot be built on this machine (e.g. bf16 without AVX512-BF16)
            skipped[row.name] = f"skipped: {exc}"
            say(f"{row.name}: {skipped[row.name]}")
        except Exception as exc:  # one broken derivative must not sink the others; the report says why
            log.debug("export of %s failed", row.name, exc_info=True)
            failed[row.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            say(f"{row.name}: export FAILED: {failed[row.name]}")
            shared = {rel for art in artifacts for rel in (art.path, *art.extra_files)}
            for rel in (row.path, *row.extra_files):
                if rel in shared:  # openvino-bf16 shares the FP16 IR's files
                    continue
                with contextlib.suppress(FileNotFoundError):
                    (work / rel).unlink()

    bundle = Bundle(root=work, metadata=metadata, artifacts=artifacts, reference=reference.path,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    results = None
    unverified_reason = ""
    if gate_tensors is not None:
        say(f"parity gate on {len(gate_labels)} labelled images ({int(gate_labels.sum())} malignant)")
        results = run_gate(bundle, artifacts[0], artifacts[1:], gate_tensors, gate_labels, tolerances, say,
                           ood_tensors)
    else:
        unverified_reason = "parity gate did not run (no labelled set: pass --labelled labels.csv)"
        say(f"WARNING: {unverified_reason}; derived artifacts are marked unverified")

    latency = {}
    for art in artifacts:
        try:
            latency[art.name] = report.measure_latency(bundle, art, (gate_tensors if gate_tensors is not None
                                                                     else calib_tensors)[:16], latency_reps)
        except Exception as exc:  # latency is information; it must not sink an export
            latency[art.name] = {"error": str(exc)}
    # TensorRT readiness of every INT8 ONNX graph (export-engines builds the INT8 engine from it)
    trt_checks = {art.name: trt_compat.check_file(work / art.path) for art in artifacts
                  if work / art.path == tensorrt_export.engine_source(work, "int8")}
    for name, result in trt_checks.items():
        say(f"{name}: TensorRT graph check " + ("passed" if result["passed"] else
                                                 "FAILED: " + "; ".join(result["problems"])))
    kept, rejected = apply_verdicts(work, artifacts, results, allow_parity_failure, unverified_reason, say)
    for art in kept:
        if art.name in build_facts:
            art.parity["build"] = build_facts[art.name]
        if art.name in trt_checks:
            art.parity["tensorrt_compatibility"] = trt_checks[art.name]
    for item in rejected:
        if item["name"] in trt_checks:
            item["parity"]["tensorrt_compatibility"] = trt_checks[item["name"]]
    kept[0].parity["torch_check"] = reference_check
    if results is None:
        kept[0].parity["status"] = "reference (labelled parity gate did not run)"
    bundle.artifacts = kept
    # each artifact's final threshold and verdict go into its own file too (cross-checked on every load)
    seal.embed_artifact_records(work, kept)

    gate_info = {"ran": results is not None, "reason": unverified_reason, "labelled": gate_csvs,
                 "split": labelled_split, "n_images": int(len(gate_labels)) if gate_labels is not None else 0,
                 "n_malignant": int(gate_labels.sum()) if gate_labels is not None else 0,
                 "per_dataset": gate_datasets or {},
                 "target_sensitivity": target_sensitivity(metadata),
                 "tolerances": asdict(tolerances),
                 "rules": GATE_RULES}
    calib_info = {"images": int(len(calib_tensors)), "sources": [str(s) for s in calib_sources],
                  "per_dataset": calibration.mix(calib_files, calib_sources),
                  "mix": "stratified round-robin over the sources; labels.csv: train split only, "
                         "never gate/val/test images",
                  "files": [p.name for p in calib_files]}
    bundle.extra = {"export": {
        "checkpoint": {"path": ckpt.path, "sha256": ckpt.sha256, "builder": ckpt.builder},
        "tools": _versions(), "host": report.host(), "reference_check": reference_check,
        "calibration": calib_info, "parity": gate_info, "quantization": quantization,
        "rejected": rejected, "skipped": skipped, "failed": failed}}
    if (work / formats.TIMING_CACHE).is_file():
        bundle.extra["export"]["tensorrt_timing_cache"] = sha256_file(work / formats.TIMING_CACHE)
    write_manifest(bundle)
    _write_report(bundle, ckpt, latency, rejected, skipped, failed, gate_info, calib_info, quantization)
    return bundle


def _write_report(bundle: Bundle, ckpt: Any, latency: dict[str, Any], rejected: list[dict[str, Any]],
                  skipped: dict[str, str], failed: dict[str, str], gate_info: dict[str, Any],
                  calib_info: dict[str, Any], quantization: dict[str, Any]) -> None:
    rows = report_rows(bundle.artifacts, rejected, latency)
    data = {"model_id": bundle.model_id, "created": bundle.created,
            "checkpoint": bundle.extra["export"]["checkpoint"], "host": report.host(), "tools": _versions(),
            "calibration": {k: v for k, v in calib_info.items() if k != "files"}, "parity": gate_info,
            "artifacts": rows, "skipped": skipped, "failed": failed, "quantization": quantization}
    report.write(bundle.root, data)


# ----------------------------------------------------------------------------- export_engines
