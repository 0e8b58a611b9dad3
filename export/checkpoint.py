"""Open a training checkpoint for export: (torch module returning logits, ModelMetadata, raw dict) + provenance.

The checkpoint format belongs to dermsort.train (``dermsort.train.checkpoint``: its constants, checks and
``load_checkpoint``, which rebuilds a fitted not-dermoscopy gate too); this module calls it and turns
its failures into ``ModelError`` messages. A checkpoint whose architecture train/ cannot build (not in
its registry, or dermsort.train.models not importable) falls back to torchvision's constructor of that
name, unless it carries a gate: exporting without the gate would drop a safety check.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from dermsort.runtime.errors import ModelError
from dermsort.runtime.fileops import sha256_file
from dermsort.runtime.metadata import ModelMetadata
from dermsort.train.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, model_from_checkpoint, read_checkpoint

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "LoadedCheckpoint", "load_checkpoint", "read_checkpoint"]
#: the provenance name of train's loader in the manifest's export section
TRAIN_BUILDER = "dermsort.train.checkpoint.load_checkpoint"


@dataclass
class LoadedCheckpoint:
    model: Any  # torch.nn.Module in eval mode, returning logits
    metadata: ModelMetadata
    raw: dict[str, Any]
    #: which code built the module: ``TRAIN_BUILDER`` or "torchvision"
    builder: str
    sha256: str
    path: str = ""


def _torchvision_model(architecture: str, num_classes: int) -> Any:
    import torchvision

    builder = getattr(torchvision.models, architecture, None)
    if builder is None or not callable(builder) or architecture.startswith("_"):
        raise ModelError(f"architecture {architecture!r} is neither known to dermsort.train.models nor a torchvision "
                         'model; install dermsort[train] from the same checkout that trained it')
    return builder(weights=None, num_classes=num_classes)


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Rebuild the trained model in eval mode (logits out, or the gated classifier) with its metadata.

    ``dermsort.train.checkpoint`` first (train's registry, gate, test-time flips); for an architecture
    train/ cannot build, ``torchvision.models.<architecture>``.
    """
    if not os.path.isfile(path):
        raise ModelError(f"checkpoint not found: {path}")
    sha = sha256_file(path)
    raw = read_checkpoint(path, trusted=True)  # format, version and keys: CheckpointError is a ModelError
    try:
        metadata = ModelMetadata.from_dict(raw["metadata"])
    except ValueError as exc:
        raise ModelError(f"checkpoint {path} has unusable metadata: {exc}") from None
    try:
        model, metadata = model_from_checkpoint(raw)
        return LoadedCheckpoint(model, metadata, raw, TRAIN_BUILDER, sha, os.fspath(path))
    except (ImportError, ValueError, KeyError) as exc:  # e.g. a torchvision architecture train/ does not register
        train_error: Exception = exc
        log.info("%s could not load %s (%s); trying torchvision", TRAIN_BUILDER, path, exc)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {path} does not fit {TRAIN_BUILDER} {raw['architecture']}: "
                         f"{str(exc).splitlines()[0]}") from None
    if raw.get("gate"):  # the rebuild below knows no gate: exporting without it would drop a safety check
        raise ModelError(f"checkpoint {path} carries a not-dermoscopy gate that dermsort.train could not load "
                         f"({train_error}); install dermsort[train] from the checkout that fitted it")
    architecture, num_classes = str(raw["architecture"]), int(raw["num_classes"])
    try:
        model = _torchvision_model(architecture, num_classes)
    except ModelError:
        raise ModelError(f"cannot rebuild {architecture!r} from {path}: {train_error}") from None
    try:
        model.load_state_dict(raw["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {path} does not fit torchvision {architecture}: "
                         f"{str(exc).splitlines()[0]}") from None
    if len(metadata.classes) != num_classes:
        raise ModelError(f"checkpoint {path}: {num_classes} outputs but {len(metadata.classes)} classes in metadata")
    return LoadedCheckpoint(model.eval(), metadata, raw, "torchvision", sha, os.fspath(path))
