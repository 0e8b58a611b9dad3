"""The checkpoint contract: what ``dermsort train`` writes to checkpoint.pt and how every part opens it.

One definition of the format (``CHECKPOINT_FORMAT`` / ``CHECKPOINT_VERSION`` and the keys it must
carry), of how it is written (``save_atomic``: also the trainer's resumable ``last.pt``) and of
``load_checkpoint``: train, evaluate, the torch backend, bench's naive baseline and
export all come through here. Architectures are resolved by ``dermsort.train.models`` (imported when a
model is built, so this module stays importable where only torch is installed); a checkpoint with a
fitted not-dermoscopy gate (a "gate" key, `dermsort fit-gate`) is rebuilt as its ``GatedClassifier``.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dermsort.runtime.errors import ModelError
from dermsort.runtime.metadata import ModelMetadata

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dermsort-checkpoint"
CHECKPOINT_VERSION = 1
#: keys every checkpoint carries (finish.py writes them; val/test scores and provenance ride along)
REQUIRED_KEYS = ("architecture", "num_classes", "state_dict", "metadata")


class CheckpointError(ModelError, ValueError):
    """Not a usable dermsort checkpoint (a ValueError too: train's commands catch those)."""


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a hidden ``.part`` file beside ``path``, then rename: no reader sees half a file."""
    tmp = path.with_name(f".{path.name}.part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    trusted: bool = False) -> dict[str, Any]:
    """The checkpoint dict, format, version and keys checked; loaded with ``weights_only=True``.

    ``trusted``: a file whose metadata holds objects the weights-only unpickler refuses (numpy
    scalars) is loaded with the full unpickler, with a warning (export does this for its own runs).
    """
    try:
        raw = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        if not trusted:
            raise
        log.warning("checkpoint %s needs full unpickling (%s); loading it as trusted", path, str(exc).splitlines()[0])
        raw = torch.load(os.fspath(path), map_location=map_location, weights_only=False)
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a dermsort checkpoint (format {CHECKPOINT_FORMAT!r}); "
                              "train one with `dermsort train`")
    if int(raw.get("version", 0)) != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is checkpoint version {raw.get('version')}; "
                              f"this dermsort reads {CHECKPOINT_VERSION}")
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}")
    return raw


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, ModelMetadata]:
    """(model in eval mode, metadata) from a checkpoint dict: train's architecture, its gate or test-time flips.

    Raises ImportError when dermsort.train.models cannot be imported and ValueError for an
    architecture its registry does not know (export then tries torchvision's names).
    """
    from .models import build_model

    metadata = ModelMetadata.from_dict(ckpt["metadata"])
    model = build_model(ckpt["architecture"], int(ckpt["num_classes"]), pretrained=False)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    if ckpt.get("gate"):
        # the not-dermoscopy gate (fitted by `dermsort fit-gate`): probabilities + gate score, flips inside
        from .gate import GatedClassifier, gate_from_state

        model = GatedClassifier(model, ckpt["architecture"], ckpt.get("tta"), gate_from_state(ckpt["gate"]))
    else:
        from .models import with_tta

        model = with_tta(model, ckpt.get("tta"))  # test-time flips chosen on val travel inside the model
    model.eval()
    return model, metadata


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    trusted: bool = False) -> tuple[nn.Module, ModelMetadata, dict]:
    """A checkpoint.pt written by ``dermsort train`` -> (model in eval mode, its metadata, the raw dict)."""
    ckpt = read_checkpoint(path, map_location, trusted)
    model, metadata = model_from_checkpoint(ckpt)
    return model, metadata, ckpt
