"""The not-dermoscopy gate: an out-of-distribution score computed inside the model graph.

The gate reads the classifier's own penultimate features (the input of its last linear layer, averaged
over the test-time views), so it costs two small matrix products on top of the classifier and every
exported artifact and backend computes it. Two scores are fitted on training images only:

- ``mahalanobis``: the smallest class-conditional Mahalanobis distance to the dermoscopy training
  features (Lee et al., NeurIPS 2018), with a shared, shrunk covariance in a PCA subspace. It needs no
  out-of-distribution images, so it also flags kinds of images nobody thought of.
- ``probe``: a logistic regression of "not dermoscopy" on the same features, trained against real
  non-dermoscopy photos (outlier exposure, Hendrycks et al., ICLR 2019) plus cheap rendered negatives.

The features may also hold the spatial means of earlier stages' outputs (``gate["layers"]``: stage indices
of the architecture's ``stages``): those keep what the classifier was trained to ignore (the camera's
light, blur and colour), which is what tells a clinical photo from a dermoscopy image (the multi-layer
feature ensemble of Lee et al. 2018). They come first in the vector, then the penultimate features.

The gate's output is ``sigmoid(max(z_mahalanobis, z_probe))`` (or one of them alone): each ``z`` is its
score standardised so that 0 is that score's own operating point; the combined threshold is chosen on
validation images only. ``fit_gate`` (train side) measures the candidates side by side on the val split;
``GatedClassifier`` is the module that export turns into the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .models import TTA_MODES, classifier_of, get_entry

#: the gate's components, in the order their standardised scores are stacked
COMPONENTS = ("mahalanobis", "probe")


class GatedClassifier(nn.Module):
    """The classifier plus its gate: ``forward`` returns (N, C + 1) = softmax probabilities, gate score.

    Test-time flips (``tta``) run inside, as in ``models.FlipTTA``: the logits and the features of the
    image and its mirror images are averaged before the softmax and the gate.
    """

    #: export must not append another softmax (``export.onnx_export.with_softmax`` reads this)
    outputs_probabilities = True

    def __init__(self, model: nn.Module, architecture: str, tta: str | None, gate: dict[str, Any]):
        super().__init__()
        self.model = model
        self.architecture = architecture
        self.tta = tta or "none"
        self.flips = TTA_MODES[self.tta]
        self.head = classifier_of(model, architecture)
        #: stage indices whose output's spatial mean joins the features (before the penultimate ones)
        self.layers = [int(i) for i in gate.get("layers", [])]
        self._taps = stage_taps(model, architecture, self.layers)
        self.components = [c for c in COMPONENTS if c in gate["use"]]
        k = int(gate["mahalanobis"]["projection"].shape[0]) if "mahalanobis" in gate else 1
        f = int(gate["feature_mean"].shape[0])
        self.register_buffer("feature_mean", torch.as_tensor(gate["feature_mean"], dtype=torch.float32))
        # an unused component costs no bytes: its buffers shrink to one zero row (the graph stays the same)
        if "mahalanobis" not in self.components:
            k = 1
        maha = (gate.get("mahalanobis") if "mahalanobis" in self.components else None) or {"projection": np.zeros((k, f)), "class_means": np.zeros((1, k)),
                                           "offset": 0.0, "scale": 1.0}
        # whitened PCA projection (k x F) and the class means in that space (K x k)
        self.register_buffer("projection", torch.as_tensor(maha["projection"], dtype=torch.float32))
        self.register_buffer("class_means", torch.as_tensor(maha["class_means"], dtype=torch.float32))
        probe = gate.get("probe") or {"weight": np.zeros(f), "bias": 0.0, "offset": 0.0, "scale": 1.0}
        self.register_buffer("probe_weight", torch.as_tensor(probe["weight"], dtype=torch.float32).reshape(-1, 1))
        self.register_buffer("affine", torch.tensor(
            [[float(maha["scale"]), -float(maha["offset"]) * float(maha["scale"])],
             [float(probe["scale"]), (float(probe["bias"]) - float(probe["offset"])) * float(probe["scale"])]],
            dtype=torch.float32))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits) of a batch: the features are the head's input."""
        captured: list[torch.Tensor] = []
        taps: list[torch.Tensor | None] = [None] * len(self._taps)
        hooks = [self.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))]
        for i, module in enumerate(self._taps):
            hooks.append(module.register_forward_hook(lambda _m, _a, out, i=i: taps.__setitem__(i, out)))
        try:
            logits = self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        pooled = [t.mean(dim=(2, 3)) for t in taps if t is not None]
        return torch.cat([*pooled, captured[0].flatten(1)], dim=1), logits

    def component_score(self, feats: torch.Tensor, name: str) -> torch.Tensor:
        """(N,) standardised score of one component: 0 at its own operating point, larger = less dermoscopy."""
        centred = feats - self.feature_mean
        row = COMPONENTS.index(name)
        if name == "mahalanobis":
            z = centred @ self.projection.t()  # (N, k), whitened
            # min over classes of |z - m_c|^2 = |z|^2 - max_c (2 z.m_c - |m_c|^2)
            cross = 2.0 * (z @ self.class_means.t()) - (self.class_means * self.class_means).sum(dim=1)
            raw = torch.sqrt(torch.clamp((z * z).sum(dim=1) - cross.max(dim=1).values, min=0.0))
        else:
            raw = (centred @ self.probe_weight).squeeze(1)
        return raw * self.affine[row, 0] + self.affine[row, 1]

    def gate_logit(self, feats: torch.Tensor) -> torch.Tensor:
        # only the chosen components are in the graph (a probe-only gate is a dot product and a sigmoid)
        out = self.component_score(feats, self.components[0])
        for extra in self.components[1:]:
            out = torch.maximum(out, self.component_score(feats, extra))
        return out

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) averaged over the image and its test-time mirror images."""
        if not self.flips:
            return self.features_and_logits(x)
        stacked = torch.cat([x] + [torch.flip(x, dims) for dims in self.flips], dim=0)
        feats, logits = self.features_and_logits(stacked)
        n, v = x.shape[0], len(self.flips) + 1
        return feats.reshape(v, n, -1).mean(dim=0), logits.reshape(v, n, -1).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - probabilities + gate
        feats, logits = self.views(x)
        probs = torch.softmax(logits, dim=1)
        gate = torch.sigmoid(self.gate_logit(feats)).unsqueeze(1)
        return torch.cat([probs, gate], dim=1)


def _last_module(stage: nn.Module) -> nn.Module:
    children = list(stage.children())
    return _last_module(children[-1]) if isinstance(stage, (nn.ModuleList, nn.Sequential)) and children else stage


def stage_taps(model: nn.Module, architecture: str, layers: list[int]) -> list[nn.Module]:
    """The module whose output is each stage's output: stages are ModuleLists, so their last block (or
    BatchNorm) is hooked."""
    if not layers:
        return []
    stages = get_entry(architecture).stages(model)
    return [_last_module(stages[i]) for i in layers]


def layer_widths(model: nn.Module, architecture: str, layers: list[int], input_size: int = 64) -> list[int]:
    """Channels of each tapped stage's output (one forward pass on zeros)."""
    if not layers:
        return []
    widths: dict[int, int] = {}
    hooks = [module.register_forward_hook(lambda _m, _a, out, i=i: widths.__setitem__(i, int(out.shape[1])))
             for i, module in zip(layers, stage_taps(model, architecture, layers))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [widths[i] for i in layers]


def gate_to_state(gate: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays -> tensors for ``torch.save(weights_only=True)``."""
    def conv(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
        if isinstance(v, np.generic):  # numpy scalars would need full unpickling to load
            return v.item()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v
    return conv(gate)


def gate_from_state(state: dict[str, Any]) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.numpy()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(state)
