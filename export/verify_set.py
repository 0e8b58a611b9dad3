"""The verification set: the FP32 reference's decisions and P(malignant) on a few real images in the bundle.

Artifacts built after the export, on the device that runs them (TensorRT engines on a Jetson), have no
labelled data there. They can still be held to the reference: the bundle carries N small real images
(the original files, a few hundred KB in all) with what the reference artifact decided for each, and
an artifact is verified when it agrees -- no labels needed:

* **decisions**: at the artifact's own threshold, at most ``max_flips`` (default 0) of the N images
  get a benign/review decision different from the reference's, in either direction;
* **probabilities**: max |p - p_reference| <= ``ATOL[precision]`` (FP16 0.02, BF16 0.05, INT8 0.15): about
  1.6-6x what the default bundle's accepted artifacts differ by on its set (onnx-fp16 0.0035,
  openvino-fp16 0.0036, openvino-int8 0.092), so an honest build passes and a broken one that keeps
  the decisions by luck still fails here.

The images are chosen at export time away from the threshold (|logit p - logit threshold| >=
``margin``, default 1.0: the default bundle's INT8 artifact moves an image by at most 0.61 logit
near the threshold) and from both sides of it, so an honest FP16/INT8 build keeps every decision
while a broken one (wrong weights, wrong input layout, wrong precision) flips some. Without labels
the threshold is not recalibrated: each artifact is judged at its own threshold from the manifest
(an engine gets the reference's); an INT8 engine that needs a recalibrated threshold is refused
here and can be gated with ``export-engines --labelled`` instead. Before judging anything
the reference itself runs on this machine and must reproduce the stored decisions and probabilities
(``REFERENCE_ATOL``): otherwise the install (decoder, runtime) is what is broken, and it says so.

Files: ``verify/reference.json`` (format, reference, threshold, one row per image) and the images
under ``verify/``; the manifest's ``verification_set`` entry lists every one of them with its sha256.
Regenerate the default bundle's set with ``scripts/make-verify-set.sh`` (``python -m
dermsort.export.verify_set build``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from dermsort.runtime.bundle import Artifact, Bundle, load_bundle, sha256_file, write_manifest
from dermsort.runtime.errors import DermsortError, ModelError
from dermsort.runtime.preprocess import IMAGE_EXTENSIONS, preprocess_file

from . import calibration, formats, parity

log = logging.getLogger(__name__)

FORMAT = "dermsort-verification-set"
VERSION = 1
MANIFEST_KEY = "verification_set"
FOLDER = "verify"
REFERENCE_JSON = f"{FOLDER}/reference.json"
#: the FP32 reference on the device vs the stored probabilities (same model, same images: only the
#: decoder / runtime build can differ; measured x86 vs arm64 in docs/deploy/arm64-check.txt)
REFERENCE_ATOL = 1e-3
#: largest |p - p_reference| per precision (see the module docstring for where the numbers come from)
ATOL = {"fp32": REFERENCE_ATOL, "fp16": 0.02, "bf16": 0.05, "int8": 0.15}
DEFAULT_COUNT = 24
#: |logit p - logit threshold| of every chosen image (1.0: the odds at least e times away)
DEFAULT_MARGIN = 1.0
DEFAULT_MAX_BYTES = 1_000_000


@dataclass
class VerificationSet:
    """What the reference decided on the bundled images; ``files`` are bundle-relative paths."""

    reference: str
    reference_sha256: str
    threshold: float
    files: list[str]
    p_reference: np.ndarray
    review: np.ndarray
    margin: float

    def tensors(self, bundle: Bundle) -> np.ndarray:
        """The images through the runtime's own preprocessing (decode, resize, crop, normalise)."""
        return np.stack([preprocess_file(bundle.root / rel, bundle.metadata.preprocess)[0] for rel in self.files])

    def describe(self) -> dict[str, Any]:
        bundled = not any(Path(f).is_absolute() for f in self.files)
        return {"kind": "verification set (no labels)" if bundled else "verification images given here (no labels)",
                "file": REFERENCE_JSON if bundled else "", "n_images": len(self.files),
                "n_review": int(self.review.sum()), "reference": self.reference, "margin_logit": self.margin}


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def load(bundle: Bundle) -> VerificationSet | None:
    """The bundle's verification set, every file checked against the manifest; None when it has none."""
    entry = bundle.extra.get(MANIFEST_KEY)
    if not entry:
        return None
    try:
        files = dict(entry["files"])
        path = str(entry["path"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{bundle.root}/manifest.json: malformed {MANIFEST_KEY} entry") from None
    for rel, expected in files.items():
        full = bundle.root / rel
        if not full.is_file():
            raise ModelError(f"verification set file missing: {full}")
        if sha256_file(full) != expected:
            raise ModelError(f"checksum mismatch for {full} (verification set): modified or corrupt; reinstall "
                             "the model")
    if path not in files:
        raise ModelError(f"{bundle.root}/manifest.json: {MANIFEST_KEY} does not list its own {path}")
    try:
        data = json.loads((bundle.root / path).read_text())
        if data.get("format") != FORMAT or int(data.get("version", 0)) != VERSION:
            raise ValueError(f"not a {FORMAT} version {VERSION}")
        rows = data["images"]
        vset = VerificationSet(reference=data["reference"], reference_sha256=data["reference_sha256"],
                               threshold=float(data["threshold"]), files=[r["file"] for r in rows],
                               p_reference=np.asarray([float(r["p_malignant"]) for r in rows]),
                               review=np.asarray([r["decision"] == "review" for r in rows]),
                               margin=float(data.get("margin_logit", 0.0)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read the verification set {bundle.root / path}: {exc}") from None
    unlisted = [rel for rel in vset.files if rel not in files]
    if unlisted or not vset.files:
        raise ModelError(f"verification set {path}: images not listed in the manifest: {unlisted or 'none at all'}")
    return vset


def agreement(name: str, p_art: np.ndarray, threshold: float, vset: VerificationSet, atol: float,
              max_flips: int = 0, backend: dict[str, Any] | None = None) -> parity.ParityResult:
    """Judge one artifact's probabilities on the verification images against the stored reference."""
    p_art = np.asarray(p_art, np.float64)
    review = p_art >= threshold
    to_benign = vset.review & ~review
    to_review = ~vset.review & review
    flips = int(to_benign.sum() + to_review.sum())
    diff = np.abs(p_art - vset.p_reference)
    n = len(p_art)
    result = parity.ParityResult(
        artifact=name, status="passed", reference=vset.reference, n_images=n, threshold=None,
        reference_threshold=vset.threshold, recalibrated=False, flips=flips, flip_rate=flips / n,
        flips_to_benign=int(to_benign.sum()), flips_to_review=int(to_review.sum()),
        max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()), atol=atol,
        within_atol=bool(diff.max() <= atol), tolerances={"max_flips": max_flips, "atol": atol},
        backend=dict(backend or {}))
    result.checks = {"flips": flips <= max_flips, "max_abs_diff": result.within_atol}
    what = (f"{flips} decision flip(s) on {n} bundled verification images ({result.flips_to_benign} to benign, "
            f"{result.flips_to_review} to review; {max_flips} allowed), max |p diff| {result.max_abs_diff:.3g} "
            f"(allowed {atol:g}) at threshold {threshold:.4f}")
    if all(result.checks.values()):
        result.message = f"{name} agrees with {vset.reference} (no labels): {what}"
    else:
        result.status = "failed"
        result.message = f"{name} REJECTED: disagrees with {vset.reference}: {what}"
    return result


def check(bundle: Bundle, artifacts: Iterable[Artifact], vset: VerificationSet | None = None,
          max_flips: int = 0, say: Callable[[str], None] | None = None) -> dict[str, parity.ParityResult]:
    """Run the reference, then each artifact, on the verification images through the real backends.

    Raises ModelError when the bundle has no verification set, or when the reference on this machine
    does not reproduce its stored decisions (then nothing built here can be judged against it).
    """
    say = say or log.info
    vset = vset or load(bundle)
    if vset is None:
        raise ModelError(f"bundle {bundle.root} has no verification set (make one: python -m "
                         "dermsort.export.verify_set build BUNDLE --images DIR)")
    reference = bundle.get(vset.reference)
    if reference.sha256 != vset.reference_sha256:
        raise ModelError(f"the verification set was made with another {vset.reference} (sha256 "
                         f"{vset.reference_sha256[:12]}..., the bundle's is {reference.sha256[:12]}...): rebuild it")
    bundle.verify(reference)
    tensors = vset.tensors(bundle)
    p_here, _ = parity.predict_p_malignant(bundle, reference, tensors)
    here = agreement(reference.name, p_here, reference.threshold, vset, REFERENCE_ATOL)
    if here.status != "passed":
        raise ModelError(f"the FP32 reference {reference.name} on this machine does not reproduce the bundle's "
                         f"verification set ({here.flips} flip(s), max |p diff| {here.max_abs_diff:.3g} > "
                         f"{REFERENCE_ATOL:g} allowed): the image decoder or ONNX Runtime here differs; nothing can "
                         "be verified against it")
    say(f"{reference.name} on this machine reproduces the verification set: {len(p_here)} images, max |p diff| "
        f"{here.max_abs_diff:.2g}")
    results: dict[str, parity.ParityResult] = {}
    for art in artifacts:
        bundle.verify(art)
        atol = ATOL.get(art.precision, ATOL["int8"])
        p_art, described = parity.predict_p_malignant(bundle, art, tensors)
        results[art.name] = agreement(art.name, p_art, art.threshold, vset, atol, max_flips, described)
        say(results[art.name].message)
    return results


# ----------------------------------------------------------------------------- building a set

def from_images(bundle: Bundle, sources: Iterable[str | os.PathLike], count: int = DEFAULT_COUNT,
                margin: float = DEFAULT_MARGIN) -> VerificationSet:
    """A set made here from the user's own images (no labels): the reference's decisions on this machine."""
    reference, paths, p_ref, picked = _pick(bundle, sources, count, margin)
    p = np.asarray([p_ref[i] for i in picked], np.float64)
    return VerificationSet(reference=reference.name, reference_sha256=reference.sha256,
                           threshold=reference.threshold, files=[str(paths[i].resolve()) for i in picked],
                           p_reference=p, review=p >= reference.threshold, margin=margin)


def _pick(bundle: Bundle, sources: Iterable[str | os.PathLike], count: int,
          margin: float) -> tuple[Artifact, list[Path], np.ndarray, list[int]]:
    """Run the (checksum-verified) FP32 reference on the decodable images of ``sources`` and choose ``count``
    of them (``choose``): the reference, the decodable paths, their p_malignant and the chosen indices."""
    reference = bundle.get(formats.REFERENCE)
    bundle.verify(reference)
    paths = _candidates(sources)
    tensors, kept = calibration.load_tensors(paths, bundle.metadata.preprocess, skip_concerns=True)
    paths = [paths[i] for i in kept]
    p_ref, _ = parity.predict_p_malignant(bundle, reference, tensors)
    return reference, paths, p_ref, choose(p_ref, reference.threshold, count, margin)


def _candidates(sources: Iterable[str | os.PathLike]) -> list[Path]:
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_file() and path.suffix.lower() == ".csv":
            found += [row.path for row in calibration.read_labels(path, None)]
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        elif path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(path)
        else:
            raise DermsortError(f"{source}: not a folder of images or a labels.csv")
    return found


def choose(p_ref: np.ndarray, threshold: float, count: int, margin: float) -> list[int]:
    """Indices of ``count`` images at least ``margin`` (logit) from the threshold, half from each side,
    spread from the nearest eligible image outwards (the near ones make the check sensitive)."""
    distance = _logit(p_ref) - _logit(threshold)
    picked: list[int] = []
    for side, want in ((distance >= margin, count - count // 2), (distance <= -margin, count // 2)):
        idx = np.flatnonzero(side)
        idx = idx[np.argsort(np.abs(distance[idx]), kind="stable")]
        if len(idx) < want:
            raise DermsortError(f"only {len(idx)} candidate images lie {margin:g} logit on one side of the threshold; "
                                f"{want} needed: give more images")
        picked += [int(idx[i]) for i in np.linspace(0, len(idx) - 1, want).round().astype(int)]
    return picked


def build(bundle_dir: str | os.PathLike, sources: Iterable[str | os.PathLike], count: int = DEFAULT_COUNT,
          margin: float = DEFAULT_MARGIN, max_bytes: int = DEFAULT_MAX_BYTES,
          say: Callable[[str], None] | None = None) -> VerificationSet:
    """Write ``verify/`` into a bundle: ``count`` real images with the FP32 reference's decisions."""
    say = say or log.info
    bundle, _ = load_bundle(bundle_dir)
    reference, paths, p_ref, picked = _pick(bundle, sources, count, margin)
    size = sum(paths[i].stat().st_size for i in picked)
    if size > max_bytes:
        raise DermsortError(f"the {count} chosen images take {size / 1e6:.2f} MB > {max_bytes / 1e6:.2f} MB: "
                            "give smaller images or a smaller --count")
    folder = bundle.root / FOLDER
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    rows, files = [], {}
    for k, i in enumerate(picked):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", paths[i].name)
        rel = f"{FOLDER}/{k:02d}-{safe}"
        shutil.copyfile(paths[i], bundle.root / rel)
        files[rel] = sha256_file(bundle.root / rel)
        p = float(p_ref[i])
        rows.append({"file": rel, "source": paths[i].name, "p_malignant": p,
                     "decision": "review" if p >= reference.threshold else "benign",
                     "logit_distance": round(float(_logit(p) - _logit(reference.threshold)), 4)})
    data = {"format": FORMAT, "version": VERSION, "model_id": bundle.model_id, "reference": reference.name,
            "reference_sha256": reference.sha256, "threshold": reference.threshold, "margin_logit": margin,
            "note": "P(malignant) of the FP32 reference on these images (no labels); engines built on the device "
                    "must reproduce the decisions (dermsort.export.verify_set)", "images": rows}
    (bundle.root / REFERENCE_JSON).write_text(json.dumps(data, indent=1) + "\n")
    files[REFERENCE_JSON] = sha256_file(bundle.root / REFERENCE_JSON)
    bundle.extra[MANIFEST_KEY] = {"path": REFERENCE_JSON, "n_images": len(rows), "files": files}
    write_manifest(bundle)
    vset = load(load_bundle(bundle.root)[0])
    assert vset is not None
    say(f"verification set: {len(rows)} images ({int(vset.review.sum())} review, {len(rows) - int(vset.review.sum())} "
        f"benign), {size / 1e3:.0f} KB, in {folder}")
    return vset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dermsort.export.verify_set", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write verify/ into a bundle from real images")
    b.add_argument("bundle")
    b.add_argument("--images", action="append", required=True, help="folder of images or labels.csv; repeatable")
    b.add_argument("--count", type=int, default=DEFAULT_COUNT)
    b.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    b.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES)
    c = sub.add_parser("check", help="verify artifacts of a bundle against its verification set")
    c.add_argument("bundle")
    c.add_argument("--artifact", action="append", help="artifact name (default: every one but the reference)")
    args = ap.parse_args(argv)
    try:
        if args.command == "build":
            build(args.bundle, args.images, args.count, args.margin, args.max_bytes, say=print)
            return 0
        bundle, _ = load_bundle(args.bundle)
        vset = load(bundle)
        names = args.artifact or [a.name for a in bundle.artifacts if a.name != (vset.reference if vset else "")]
        results = check(bundle, [bundle.get(n) for n in names], vset, say=print)
        return 0 if all(r.passed for r in results.values()) else 3
    except DermsortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
