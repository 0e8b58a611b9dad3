"""The PyTorch eager reference backend: loads a checkpoint.pt artifact of a bundle (tests, bench baselines)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dermsort.runtime.backends.base import Backend, BackendSpec
from dermsort.runtime.bundle import Bundle, make_artifact, write_manifest


class TorchBackend(Backend):
    spec = BackendSpec("torch", ("torch",), "train", "PyTorch eager reference (CPU/CUDA)",
                       library="torch", sorts=False)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import torch
        except ImportError:
            return False, 'torch is not installed: pip install "dermsort[train]"'
        return True, f"torch {torch.__version__}" + (", CUDA" if torch.cuda.is_available() else ", CPU")

    def _load_impl(self) -> None:
        import torch

        from .checkpoint import load_checkpoint

        want_cuda = self.device in (None, "cuda", "auto") and torch.cuda.is_available()
        if self.device == "cuda" and not want_cuda:
            from dermsort.runtime.errors import BackendUnavailable

            raise BackendUnavailable("torch backend: CUDA requested but torch sees no CUDA device")
        self.torch_device = torch.device("cuda" if want_cuda else "cpu")
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model, self.checkpoint_metadata, _ = load_checkpoint(self.bundle.artifact_path(self.artifact),
                                                                  map_location=self.torch_device)
        self.model.to(self.torch_device)

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            logits = self.model(torch.from_numpy(batch).to(self.torch_device)).float()
        # the checkpoint's model ends in logits; deliver what the bundle's metadata promises
        if self.metadata.output == "logits":
            return logits.cpu().numpy()
        return torch.softmax(logits, dim=1).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["device"] = str(getattr(self, "torch_device", self.device or "cpu"))
        return info


def bundle_from_checkpoint(checkpoint: str | os.PathLike, root: str | os.PathLike) -> Path:
    """A minimal bundle folder around a checkpoint (one ``torch-fp32`` artifact), for the torch backend."""
    import shutil

    from .checkpoint import load_checkpoint

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _, metadata, _ = load_checkpoint(checkpoint)
    target = root / "checkpoint.pt"
    if Path(checkpoint).resolve() != target.resolve():
        shutil.copyfile(checkpoint, target)
    artifact = make_artifact(root, "checkpoint.pt", name="torch-fp32", backend="torch", precision="fp32",
                             threshold=metadata.threshold)
    write_manifest(Bundle(root=root, metadata=metadata, artifacts=[artifact], reference="checkpoint.pt",
                          created=metadata.provenance.created))
    return root
