"""The model-metadata schema (versioned), stored in ONNX ``metadata_props`` and in the bundle manifest.

One schema travels with every artifact: classes and which are malignant, the preprocessing spec,
the operating threshold and the figures it was validated at, and provenance.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
#: key under which the JSON-encoded metadata lives in ONNX ``metadata_props``
ONNX_METADATA_KEY = "dermsort"
#: key of the per-artifact decision record (JSON: artifact name -> {"threshold", "rejected"}) in the same
#: places (ONNX ``metadata_props``, OpenVINO ``rt_info``): written by the export after the parity gate set each
#: artifact's threshold, so the number the sorter applies lives inside the checksummed model file too
ARTIFACT_RECORD_KEY = "dermsort_artifacts"


@dataclass
class PreprocessSpec:
    """How a file becomes the model's input tensor (read by runtime.preprocess)."""

    input_size: int = 224
    #: shorter side is resized to this, then centre-cropped to ``input_size``
    resize_shorter: int = 224
    interpolation: str = "bilinear"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    #: pixel values are divided by this before mean/std (255 -> [0, 1])
    scale: float = 255.0
    layout: str = "NCHW"
    color: str = "RGB"
    #: colour constancy applied to the cropped image before normalisation: "none" or "shades_of_gray"
    #: (Finlayson & Trezzi 2004; each channel scaled so its Minkowski p-norm mean is grey, as the
    #: ISIC 2018/2019 winners did): removes much of a camera's and a light's colour cast
    color_constancy: str = "none"
    color_constancy_power: float = 6.0


@dataclass
class GateSpec:
    """The "is this a dermoscopy image?" gate, computed inside the model graph on every backend.

    The graph's output has one column more than there are classes: that last column is the gate's
    out-of-distribution score in [0, 1]. ``score >= threshold`` means "not recognised as a dermoscopy
    image": the image goes to review/ whatever p(malignant) says. Empty ``method`` = no gate.
    """

    method: str = ""
    #: score >= threshold -> not dermoscopy (chosen on validation images only)
    threshold: float = 0.5
    #: what the score is made of, how it was fitted and on which images (for the model card and `info`)
    details: dict[str, Any] = field(default_factory=dict)
    #: rates measured on validation/test at the threshold: per dermoscopy set (rejected share) and per
    #: out-of-distribution source (share that would reach benign/), AUROC and FPR at 95 % TPR
    validated: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.method)


@dataclass
class Validation:
    """Operating figures measured on a held-out split (grouped by lesion/patient)."""

    split: str = ""
    datasets: list[str] = field(default_factory=list)
    n_images: int = 0
    n_malignant: int = 0
    target_sensitivity: float = 0.95
    sensitivity: float | None = None
    sensitivity_ci: list[float] | None = None
    specificity: float | None = None
    specificity_ci: list[float] | None = None
    work_reduction: float | None = None
    auc: float | None = None
    auc_ci: list[float] | None = None
    #: how the operating threshold was chosen on validation: rule, sets and malignant counts it rests on
    threshold_basis: dict[str, Any] = field(default_factory=dict)
    #: the same figures for each data set of the split, and sensitivity per malignant diagnosis
    per_dataset: dict[str, Any] = field(default_factory=dict)
    per_diagnosis: dict[str, Any] = field(default_factory=dict)


@dataclass
class Provenance:
    training_data: list[str] = field(default_factory=list)
    code_version: str = ""
    pretrained: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelMetadata:
    """Everything a deployment needs to know about a model, versioned."""

    model_id: str
    architecture: str
    classes: list[str]
    malignant_classes: list[str]
    #: ``p_malignant < threshold`` is the only way to reach benign/
    threshold: float
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    #: "probabilities" (softmax inside the graph) or "logits"
    output: str = "probabilities"
    input_name: str = "input"
    output_name: str = "probabilities"
    #: the not-dermoscopy gate (issue 25); its score is the output's extra last column
    gate: GateSpec = field(default_factory=GateSpec)
    validation: Validation = field(default_factory=Validation)
    provenance: Provenance = field(default_factory=Provenance)
    #: a development model must never be presented as validated for clinical use
    development_model: bool = True
    intended_use: str = "Triage aid for dermoscopy images; not a diagnosis."
    schema_version: int = SCHEMA_VERSION

    @property
    def output_width(self) -> int:
        """Columns of the graph's output: one per class, plus the gate's score when there is a gate."""
        return len(self.classes) + (1 if self.gate.enabled else 0)

    def malignant_indices(self) -> list[int]:
        return [self.classes.index(c) for c in self.malignant_classes]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMetadata":
        version = int(data.get("schema_version", 0))
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported metadata schema_version {version} (this dermsort reads {SCHEMA_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in known}
        kw["preprocess"] = _build(PreprocessSpec, data.get("preprocess", {}))
        kw["validation"] = _build(Validation, data.get("validation", {}))
        kw["gate"] = _build(GateSpec, data.get("gate", {}))
        kw["provenance"] = _build(Provenance, data.get("provenance", {}))
        missing = [n for n in ("model_id", "architecture", "classes", "malignant_classes", "threshold") if n not in kw]
        if missing:
            raise ValueError(f"model metadata lacks {', '.join(missing)}")
        meta = cls(**kw)
        unknown = set(meta.malignant_classes) - set(meta.classes)
        if unknown:
            raise ValueError(f"malignant classes {sorted(unknown)} are not among the classes {meta.classes}")
        if not 0.0 < float(meta.threshold) <= 1.0:
            raise ValueError(f"operating threshold {meta.threshold} is outside (0, 1]")
        return meta

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        return cls.from_dict(json.loads(text))


def _build(kind: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: v for k, v in (data or {}).items() if k in known})
