"""``export_engines``: TensorRT engines built into an existing bundle on the GPU that will run them.

Each precision is built into its own temporary file and kept only when it succeeds (an INT8 failure
never discards an FP16 engine); every engine records what it was built for and passes the same parity
gate as the other artifacts when a labelled set is given, or else the label-free agreement check on
the bundle's verification set (verify_set.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dermsort.runtime.bundle import Artifact, Bundle, load_bundle, sha256_file, write_manifest
from dermsort.runtime.errors import BackendUnavailable, ModelError

from . import calibration, formats, parity, report, verify_set
from .verdict import GATE_RULES, Say, apply_verdicts, report_rows, run_gate, target_sensitivity
from .onnx_export import ExportError
from .bundle_io import _locked, recover, swap_in

log = logging.getLogger(__name__)


def export_engines(bundle_dir: str | os.PathLike, precisions: str | Iterable[str] = ("fp16", "int8"),
                   labelled: str | os.PathLike | Iterable[str | os.PathLike] = (),
                   labelled_split: str = calibration.GATE_SPLIT, allow_parity_failure: bool = False,
                   max_batch: int = 32, tolerances: parity.Tolerances = parity.Tolerances(),
                   say: Say | None = None, verify_images: Iterable[str | os.PathLike] = ()) -> Bundle:
    """Build TensorRT engines into an existing bundle, on the GPU that will run them.

    Each engine records ``built_for`` (GPU, compute capability, TensorRT version). With a labelled
    set the engines pass the same parity gate as every other artifact; without one they must agree
    with the reference on the bundle's verification set (``verify_set``: decisions and p, no labels),
    or on ``verify_images`` (the reference's decisions made here), and engines that disagree are
    refused; without any of these they are unverified.
    """
    from . import tensorrt_export

    say = say or log.info
    precs = formats.parse_list(list(precisions) if not isinstance(precisions, str) else precisions,
                               ("fp16", "int8"), "engine precision")
    ok, why = tensorrt_export.tensorrt_status()
    if not ok:
        raise BackendUnavailable(f"cannot build TensorRT engines here: {why}")
    root = Path(os.path.abspath(os.path.expanduser(bundle_dir)))
    bundle, _ = load_bundle(root)
    reference = bundle.get(formats.REFERENCE)
    bundle.verify(reference)
    csvs = [labelled] if isinstance(labelled, (str, os.PathLike)) else list(labelled)
    images = [verify_images] if isinstance(verify_images, (str, os.PathLike)) else list(verify_images)
    gate_rows, _ = calibration.gate_set(csvs, (), labelled_split)
    with _locked(root):
        recover(root, say)
        work = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.new-"))
        try:
            shutil.copytree(root, work, dirs_exist_ok=True)
            new = Bundle(root=work, metadata=bundle.metadata, artifacts=list(bundle.artifacts),
                         reference=bundle.reference, created=bundle.created, extra=dict(bundle.extra))
            facts = tensorrt_export.device_info()
            built, build_facts, skipped, failed = [], {}, {}, {}
            for precision in precs:
                row = formats.target(f"tensorrt-{precision}")
                source = tensorrt_export.engine_source(work, precision)
                source_art = next((a for a in bundle.artifacts if a.path == source.name), None)
                if source_art is None or not source.is_file():
                    # e.g. the INT8 ONNX was rejected by the CPU gate: build the other engines, say why not this
                    skipped[row.name] = (f"skipped: the bundle has no {source.name} to build it from (not exported, "
                                         "or rejected by the parity gate; re-export with --allow-parity-failure "
                                         "to gate the engine here instead)")
                    say(f"{row.name}: {skipped[row.name]}")
                    continue
                new.verify(source_art)
                say(f"building {row.name} from {source.name} on {facts['gpu']} (TensorRT {facts['tensorrt']})")
                facts_or_error = _build_engine_isolated(work, row, source, precision, bundle.metadata, max_batch)
                if isinstance(facts_or_error, str):
                    # one precision failing (e.g. INT8 tactics on this GPU) must not discard an engine already built
                    failed[row.name] = facts_or_error
                    say(f"{row.name}: build FAILED: {facts_or_error}")
                    continue
                build_facts[row.name] = facts_or_error
                built.append(row.artifact(work, reference.threshold, built_for=dict(facts)))
            if not built:
                raise ModelError("no TensorRT engine could be built: "
                                 + "; ".join([*skipped.values(), *(f"{k}: {v}" for k, v in failed.items())]))
            new.artifacts = [a for a in new.artifacts if a.name not in {b.name for b in built}] + built
            results, reason, tensors = None, "", None
            gate_info: dict[str, Any] = {"ran": False}
            if gate_rows:
                tensors, kept = calibration.load_tensors([r.path for r in gate_rows], bundle.metadata.preprocess,
                                                         skip_concerns=False)
                labels = np.asarray([gate_rows[i].malignant for i in kept], dtype=int)
                results = run_gate(new, reference, built, tensors, labels, tolerances, say)
                gate_info = {"ran": True, "labelled": [str(c) for c in csvs], "split": labelled_split,
                             "n_images": int(len(labels)), "n_malignant": int(labels.sum()),
                             "per_dataset": calibration.per_dataset(gate_rows[i] for i in kept),
                             "target_sensitivity": target_sensitivity(bundle.metadata),
                             "tolerances": asdict(tolerances), "rules": GATE_RULES}
            elif (vset := (verify_set.from_images(new, images) if images else verify_set.load(new))) is not None:
                # no labels here: the engines must reproduce the reference's decisions on these images
                say(f"no --labelled set: verifying the engines against the {vset.describe()['kind']}: "
                    f"{len(vset.files)} images")
                results = verify_set.check(new, built, vset, say=say)
                tensors = vset.tensors(new)
                gate_info = {"ran": True, **vset.describe()}
            else:
                reason = "parity gate did not run on the device (no --labelled set, no verification set in the bundle)"
                say(f"WARNING: {reason}; engines are marked unverified")
            latency = {}
            if tensors is not None:  # model-only latency needs real images; bench covers the rest
                for art in built:
                    with contextlib.suppress(Exception):
                        latency[art.name] = report.measure_latency(new, art, tensors[:16])
            kept_arts, rejected = apply_verdicts(work, built, results, allow_parity_failure, reason, say)
            for art in kept_arts:
                art.parity["build"] = build_facts[art.name]
            new.artifacts = [a for a in new.artifacts if a.name not in {b.name for b in built}] + kept_arts
            engines = new.extra.setdefault("engines", {})
            cache = work / formats.TIMING_CACHE
            engines.update({"built_for": facts, "timing_cache": formats.TIMING_CACHE,
                            "timing_cache_sha256": sha256_file(cache) if cache.is_file() else None,
                            "rejected": rejected, "skipped": skipped, "failed": failed, "parity": gate_info,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            _add_engines_to_report(work, kept_arts, rejected, latency, failed)
            write_manifest(new)  # removes the copied signature.json: it does not cover the new engines
            if bundle.signature.state != "unsigned":
                say(f"the bundle was {bundle.signature.describe()}; with engines built here it is unsigned (locally "
                    "built): sign it again with `dermsort sign BUNDLE --key KEY` (a key trusted on this device)")
            swap_in(work, root)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return load_bundle(root)[0]


def _build_engine_isolated(work: Path, row: formats.Target, source: Path, precision: str, metadata: Any,
                           max_batch: int) -> dict[str, Any] | str:
    """Build one engine into its own temp file; move it into place only when the build succeeded.

    Returns the build facts, or the reason it failed (the temp file is removed, and an engine of the
    same name from an earlier run is left as it was: a failed rebuild never deletes a working engine).
    """
    from . import tensorrt_export

    final = work / row.path
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".building")
    os.close(fd)
    tmp = Path(tmp_name)
    started = time.perf_counter()
    try:
        facts = tensorrt_export.build_engine(source, tmp, precision, metadata.input_name,
                                             metadata.preprocess.input_size, work / formats.TIMING_CACHE, max_batch)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise ExportError(f"the builder wrote no {precision} engine")
        os.replace(tmp, final)
    except Exception as exc:  # noqa: BLE001 - recorded per precision; the other engines go on
        log.debug("building %s failed", row.name, exc_info=True)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    facts = dict(facts or {})
    facts["seconds"] = round(time.perf_counter() - started, 1)
    return facts


def _add_engines_to_report(root: Path, kept: list[Artifact], rejected: list[dict[str, Any]],
                           latency: dict[str, Any], failed: dict[str, str] | None = None) -> None:
    """Fold the engines built on the device into the bundle's export report."""
    import json

    path = root / report.REPORT_JSON
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    names = {a.name for a in kept} | {r["name"] for r in rejected}
    data["artifacts"] = ([r for r in data.get("artifacts", []) if r["name"] not in names]
                         + report_rows(kept, rejected, latency))
    data["skipped"] = {k: v for k, v in data.get("skipped", {}).items() if k not in names}
    data["failed"] = {**{k: v for k, v in data.get("failed", {}).items() if k not in names},
                      **{k: f"engine build on the device: {v}" for k, v in (failed or {}).items()}}
    report.write(root, data)
