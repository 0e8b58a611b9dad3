"""Open a training checkpoint as (torch module returning logits, ModelMetadata, raw checkpoint dict).

The checkpoint format belongs to dermsort.train; this module prefers ``dermsort.train.models``
(``load_checkpoint`` / ``build_model``) and falls back to torchvision's constructors for checkpoints
whose architecture is a torchvision model name, so exports keep working while train/ evolves.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from dermsort.runtime.errors import ModelError
from dermsort.runtime.fileops import sha256_file
from dermsort.runtime.metadata import ModelMetadata

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dermsort-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class LoadedCheckpoint:
    model: Any  # torch.nn.Module in eval mode, returning logits
    metadata: ModelMetadata
    raw: dict[str, Any]
    #: which code built the module: "dermsort.train.models" or "torchvision"
    builder: str
    sha256: str
    path: str = ""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` (no arbitrary pickles) when possible."""
    import pickle

    import torch

    try:
        raw = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        # numpy scalars or other objects in the metadata need the full unpickler; only for trusted files
        log.warning("checkpoint %s needs full unpickling (%s); loading it as trusted", path, str(exc).splitlines()[0])
        raw = torch.load(os.fspath(path), map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ModelError(f"checkpoint not found: {path}") from None
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{path} is not a dermsort checkpoint (format {CHECKPOINT_FORMAT!r}); "
                         "train one with `dermsort train`")
    if int(raw.get("version", 0)) != CHECKPOINT_VERSION:
        raise ModelError(f"{path} is checkpoint version {raw.get('version')}; this exporter reads {CHECKPOINT_VERSION}")
    for key in ("architecture", "num_classes", "state_dict", "metadata"):
        if key not in raw:
            raise ModelError(f"checkpoint {path} lacks {key!r}")
    return raw


def _torchvision_model(architecture: str, num_classes: int) -> Any:
    import torchvision

    builder = getattr(torchvision.models, architecture, None)
    if builder is None or not callable(builder) or architecture.startswith("_"):
        raise ModelError(f"architecture {architecture!r} is neither known to dermsort.train.models nor a torchvision "
                         'model; install dermsort[train] from the same checkout that trained it')
    return builder(weights=None, num_classes=num_classes)


def _train_models() -> Any:
    """dermsort.train.models when installed (it owns architectures and the checkpoint format), else None."""
    import importlib

    try:
        return importlib.import_module("dermsort.train.models")
    except ImportError:
        return None


def _train_loaders(train_models: Any) -> list[tuple[str, Any]]:
    """train/'s own checkpoint loaders: the agreed ``models.load_checkpoint``, then ``trainer.load_checkpoint``."""
    import importlib

    found = []
    if getattr(train_models, "load_checkpoint", None) is not None:
        found.append(("dermsort.train.models.load_checkpoint", train_models.load_checkpoint))
    if train_models is not None:
        try:
            trainer = importlib.import_module("dermsort.train.trainer")
        except ImportError:
            trainer = None
        if getattr(trainer, "load_checkpoint", None) is not None:
            found.append(("dermsort.train.trainer.load_checkpoint", trainer.load_checkpoint))
    return found


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Rebuild the trained model in eval mode (logits out) with its metadata.

    Order: ``dermsort.train.models.load_checkpoint`` (the agreed contract) -> ``dermsort.train.trainer.
    load_checkpoint`` -> ``dermsort.train.models.build_model`` with the state dict ->
    ``torchvision.models.<architecture>`` for torchvision names.
    """
    if not os.path.isfile(path):
        raise ModelError(f"checkpoint not found: {path}")
    sha = sha256_file(path)
    train_models = _train_models()
    train_error: Exception | None = None
    for where, train_loader in _train_loaders(train_models):
        try:
            module, metadata, raw = train_loader(path)
            if not isinstance(metadata, ModelMetadata):
                metadata = ModelMetadata.from_dict(metadata)
            return LoadedCheckpoint(module.eval(), metadata, raw, where, sha, os.fspath(path))
        except Exception as exc:  # e.g. a torchvision architecture train/ does not register
            train_error = exc
            log.info("%s could not load %s (%s); trying the next loader", where, path, exc)
    raw = read_checkpoint(path)
    if raw.get("gate"):  # the rebuild below knows no gate: exporting without it would drop a safety check
        raise ModelError(f"checkpoint {path} carries a not-dermoscopy gate that dermsort.train could not load "
                         f"({train_error}); install dermsort[train] from the checkout that fitted it")
    architecture, num_classes = str(raw["architecture"]), int(raw["num_classes"])
    model, builder = None, ""
    build_model = getattr(train_models, "build_model", None)
    if build_model is not None:
        try:
            model, builder = build_model(architecture, num_classes, pretrained=False), "dermsort.train.models.build_model"
        except (KeyError, ValueError) as exc:  # not in train's registry
            train_error = train_error or exc
    if model is None:
        try:
            model, builder = _torchvision_model(architecture, num_classes), "torchvision"
        except ModelError:
            if train_error is not None:
                raise ModelError(f"cannot rebuild {architecture!r} from {path}: {train_error}") from None
            raise
    try:
        model.load_state_dict(raw["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {path} does not fit {builder} {architecture}: "
                         f"{str(exc).splitlines()[0]}") from None
    try:
        metadata = ModelMetadata.from_dict(raw["metadata"])
    except ValueError as exc:
        raise ModelError(f"checkpoint {path} has unusable metadata: {exc}") from None
    if len(metadata.classes) != num_classes:
        raise ModelError(f"checkpoint {path}: {num_classes} outputs but {len(metadata.classes)} classes in metadata")
    return LoadedCheckpoint(model.eval(), metadata, raw, builder, sha, os.fspath(path))
