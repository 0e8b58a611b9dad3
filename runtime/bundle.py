"""Model bundles: a folder with ``manifest.json``, the FP32 ONNX reference and derived artifacts.

The manifest is the checksum authority: every file an artifact needs is listed with its sha256,
and the runtime refuses to load anything that does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .fileops import sha256_file
from .metadata import ModelMetadata
from .signing import SIGNATURE, SignatureStatus, check_policy, verify_bundle

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "dermsort-bundle"
BUNDLE_VERSION = 1
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "models" / "default"


def decision_digest(manifest: dict[str, Any]) -> str:
    """sha256 over the whole manifest but its integrity record: everything that can change a decision - the
    metadata (classes, malignant classes, preprocessing, output kind, threshold, ...), every artifact entry
    (its threshold, gate verdict, files and their checksums), the verification set the engines are checked
    against. Stored as ``integrity.sha256`` and checked on every load."""
    covered = {k: v for k, v in manifest.items() if k != "integrity"}
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass
class Artifact:
    """One loadable model file (ONNX, OpenVINO IR, TensorRT engine, torch checkpoint)."""

    name: str
    path: str
    #: the backend family this artifact is for: onnxruntime (ONNX), openvino (IR), tensorrt, torch
    backend: str
    precision: str
    sha256: str
    size_bytes: int
    #: operating threshold recalibrated for this artifact (p_malignant < threshold -> benign)
    threshold: float
    accepted: bool = True
    #: files besides ``path`` (e.g. OpenVINO .bin) with their sha256
    extra_files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    #: set when an artifact that failed the parity gate was kept by an explicit flag
    override: str = ""
    #: for TensorRT engines: the GPU / TensorRT version they were built for
    built_for: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        """Failed the export's parity gate (kept only by --allow-parity-failure): never runs unless
        explicitly allowed. An *unverified* artifact (exported without labelled data) is not rejected."""
        return not self.accepted and not self.override.startswith("unverified")

    @property
    def format(self) -> str:
        suffix = Path(self.path).suffix.lower()
        return {".onnx": "onnx", ".xml": "openvino-ir", ".engine": "tensorrt-engine", ".plan": "tensorrt-engine",
                ".pt": "torch", ".pth": "torch"}.get(suffix, suffix.lstrip("."))


@dataclass
class Bundle:
    root: Path
    metadata: ModelMetadata
    artifacts: list[Artifact]
    reference: str
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: who vouches for the bundle (runtime/signing.py): set by load_bundle
    signature: SignatureStatus = field(default_factory=SignatureStatus)

    @property
    def model_id(self) -> str:
        return self.metadata.model_id

    def artifact_path(self, artifact: Artifact) -> Path:
        return self.root / artifact.path

    def get(self, name: str) -> Artifact:
        for art in self.artifacts:
            if art.name == name:
                return art
        raise ModelError(f"bundle {self.root} has no artifact named {name!r} (has: {', '.join(a.name for a in self.artifacts)})")

    def verify(self, artifact: Artifact) -> None:
        """Check every file of ``artifact`` against the manifest's sha256; raise ModelError on mismatch."""
        files = {artifact.path: artifact.sha256, **artifact.extra_files}
        for rel, expected in files.items():
            path = self.root / rel
            if not path.is_file():
                raise ModelError(f"model file missing: {path}")
            # a signed bundle's files were all hashed (and matched the signature) when it was loaded
            actual = self.signature.hashes.get(rel) or sha256_file(path)
            if actual != expected:
                raise ModelError(
                    f"checksum mismatch for {path}: manifest says {expected[:12]}..., file is {actual[:12]}... "
                    "(modified or corrupt model; re-export or reinstall it)")

    def manifest_dict(self) -> dict[str, Any]:
        data = {
            "format": BUNDLE_FORMAT,
            "bundle_version": BUNDLE_VERSION,
            "model_id": self.metadata.model_id,
            "created": self.created,
            "reference": self.reference,
            "metadata": self.metadata.to_dict(),
            "artifacts": [asdict(a) for a in self.artifacts],
            **{k: v for k, v in self.extra.items() if k != "integrity"},
        }
        data["integrity"] = {"sha256": decision_digest(data),
                             "covers": "the whole manifest but this record: metadata, every artifact entry "
                                       "(thresholds, gate verdicts, files, checksums), verification set"}
        return data


def make_artifact(root: str | os.PathLike, rel_path: str, *, name: str, backend: str, precision: str,
                  threshold: float, extra_files: list[str] | None = None, **kw: Any) -> Artifact:
    """Describe a file already written under ``root``, computing its checksum and size."""
    root = Path(root)
    path = root / rel_path
    extras = {rel: sha256_file(root / rel) for rel in (extra_files or [])}
    size = path.stat().st_size + sum((root / rel).stat().st_size for rel in extras)
    return Artifact(name=name, path=rel_path, backend=backend, precision=precision, sha256=sha256_file(path),
                    size_bytes=size, threshold=float(threshold), extra_files=extras, **kw)


def write_manifest(bundle: Bundle) -> Path:
    """Write ``manifest.json`` atomically (temp file + fsync + rename).

    A signature over the old bundle no longer holds for the new manifest: it is removed (the bundle is now
    "unsigned (locally built)" until signed again with `dermsort sign`)."""
    target = bundle.root / MANIFEST
    old_signature = bundle.root / SIGNATURE
    if old_signature.exists():
        old_signature.unlink()
        bundle.signature = SignatureStatus()
    fd, tmp = tempfile.mkstemp(dir=bundle.root, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(bundle.manifest_dict(), fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    # mkstemp creates 0600; a manifest must be readable by a service user like any installed file
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o644 & ~umask)
    os.replace(tmp, target)
    return target


def load_bundle(path: str | os.PathLike | None, require_signed: bool = False,
                require_why: str = "--require-signed") -> tuple[Bundle, str | None]:
    """Open a bundle from a folder, its manifest.json, or one artifact file inside it.

    Returns the bundle and, when a single artifact file was named, that artifact's name.
    Raises ModelError with a one-line reason for anything that is not a usable bundle: a signature that does
    not match it, or (``require_signed``) no signature by a trusted key.
    """
    if path is None:
        path = DEFAULT_BUNDLE
        if not (path / MANIFEST).is_file():
            raise ModelError(f"the bundled default model is missing from {path} (broken install; reinstall dermsort)")
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    chosen: str | None = None
    if path.is_dir():
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise ModelError(f"{path} is not a dermsort model bundle (no {MANIFEST}); export one with `dermsort export`")
    elif path.name == MANIFEST:
        manifest = path
    else:
        # artifacts may sit in a subfolder of the bundle (openvino/, tensorrt/)
        found = [d / MANIFEST for d in (path.parent, path.parent.parent) if (d / MANIFEST).is_file()]
        manifest = found[0] if found else path.parent / MANIFEST
        if not found:
            raise ModelError(
                f"{path} has no {MANIFEST} beside it, so its checksum cannot be verified; "
                "use a bundle written by `dermsort export`")
        chosen = path.resolve()
    try:
        data = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {manifest}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{manifest} is not a dermsort bundle manifest")
    if int(data.get("bundle_version", 0)) != BUNDLE_VERSION:
        raise ModelError(f"{manifest} has bundle_version {data.get('bundle_version')}; this dermsort reads {BUNDLE_VERSION}")
    recorded = (data.get("integrity") or {}).get("sha256") if isinstance(data.get("integrity"), dict) else None
    if not recorded:
        raise ModelError(f"{manifest} has no integrity record, so its threshold and metadata cannot be trusted; "
                         "re-export the model with this dermsort")
    if recorded != decision_digest(data):
        raise ModelError(f"{manifest} was modified after export: its thresholds/metadata do not match its integrity "
                         "record (an edited threshold changes every decision); re-export or reinstall the model")
    try:
        metadata = ModelMetadata.from_dict(data["metadata"])
        known = set(Artifact.__dataclass_fields__)
        artifacts = [Artifact(**{k: v for k, v in a.items() if k in known}) for a in data["artifacts"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{manifest} is malformed: {exc}") from None
    extra = {k: v for k, v in data.items()
             if k not in {"format", "bundle_version", "model_id", "created", "reference", "metadata", "artifacts",
                          "integrity"}}
    bundle = Bundle(root=manifest.parent.resolve(), metadata=metadata, artifacts=artifacts,
                    reference=data.get("reference", ""), created=data.get("created", ""), extra=extra)
    bundle.signature = verify_bundle(bundle.root, str(data.get("model_id", "")))
    check_policy(bundle.signature, bundle.root, require_signed, require_why)
    name = None
    if chosen is not None:
        matches = [a for a in artifacts if (bundle.root / a.path).resolve() == chosen]
        if not matches:
            raise ModelError(f"{path} is not listed in {manifest}, so its checksum cannot be verified")
        name = matches[0].name
    return bundle, name
