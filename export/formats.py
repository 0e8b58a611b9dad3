"""The one table of export targets (toolkit x precision): it drives the export, the CLI and the docs.

Each row says where the artifact lives in the bundle, which runtime backend loads it, where it can
be built, and the probability tolerance expected of it against the FP32 reference (informational:
the gate itself decides on sensitivity and decision flips, see parity.py).

Each row's builder lives in ``<toolkit>_export.py`` and registers itself there with ``@builds(name)``;
that module is imported only when one of its targets is built, so OpenVINO or TensorRT load only
for their own targets.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dermsort.runtime.bundle import Artifact, make_artifact
from dermsort.runtime.errors import DermsortError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
REFERENCE = "onnx-fp32"


@dataclass(frozen=True)
class Target:
    """One artifact the exporter can produce."""

    name: str
    toolkit: str
    precision: str
    #: the runtime backend family that loads it (dermsort.runtime.backends)
    backend: str
    path: str
    extra_files: tuple[str, ...] = ()
    #: "cpu": built anywhere; "gpu": built only on the target device (TensorRT engines)
    built_on: str = "cpu"
    #: expected max |p_malignant diff| vs the FP32 reference (reported, not gated)
    atol: float = 1e-4

    @property
    def module(self) -> str:
        """The module whose ``@builds`` builder makes this artifact."""
        return f"{__package__}.{self.toolkit}_export"

    def artifact(self, root: Path, threshold: float, **kw: Any) -> Artifact:
        """The manifest record of this target's files under ``root`` (sizes and checksums read now)."""
        return make_artifact(root, self.path, name=self.name, backend=self.backend, precision=self.precision,
                             threshold=threshold, extra_files=list(self.extra_files), **kw)


TARGETS: tuple[Target, ...] = (
    Target("onnx-fp32", "onnx", "fp32", "onnxruntime", "model.onnx", atol=1e-4),
    Target("onnx-fp16", "onnx", "fp16", "onnxruntime", "model.fp16.onnx", atol=1e-2),
    Target("onnx-int8", "onnx", "int8", "onnxruntime", "model.int8.onnx", atol=5e-2),
    # the form ONNX Runtime's CPU kernels are fast with (uint8 activations x int8 weights); not TensorRT's
    Target("onnx-int8-u8s8", "onnx", "int8", "onnxruntime", "model.int8-u8s8.onnx", atol=5e-2),
    Target("openvino-fp32", "openvino", "fp32", "openvino", "openvino/model_fp32.xml",
           ("openvino/model_fp32.bin",), atol=1e-4),
    Target("openvino-fp16", "openvino", "fp16", "openvino", "openvino/model_fp16.xml",
           ("openvino/model_fp16.bin",), atol=1e-2),
    # OpenVINO executing the FP16 IR in bf16 (AVX512-BF16 / AMX CPUs): the same files, its own precision,
    # threshold and gate verdict (the runtime pins f32 execution for every other IR)
    Target("openvino-bf16", "openvino", "bf16", "openvino", "openvino/model_fp16.xml",
           ("openvino/model_fp16.bin",), atol=2e-2),
    Target("openvino-int8", "openvino", "int8", "openvino", "openvino/model_int8.xml",
           ("openvino/model_int8.bin",), atol=5e-2),
    Target("tensorrt-fp16", "tensorrt", "fp16", "tensorrt", "tensorrt/model_fp16.engine", built_on="gpu", atol=1e-2),
    Target("tensorrt-int8", "tensorrt", "int8", "tensorrt", "tensorrt/model_int8.engine", built_on="gpu", atol=5e-2),
)
TOOLKITS = tuple(dict.fromkeys(t.toolkit for t in TARGETS))
#: TensorRT keeps one timing cache per bundle so rebuilding on the same device is fast
TIMING_CACHE = "tensorrt/timing.cache"


def target(name: str) -> Target:
    for row in TARGETS:
        if row.name == name:
            return row
    raise KeyError(name)


def parse_list(value: str | list[str] | tuple[str, ...], allowed: tuple[str, ...], what: str) -> list[str]:
    """'onnx,openvino' -> ['onnx', 'openvino'], validated against ``allowed`` with a did-you-mean hint."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        if item not in allowed:
            close = difflib.get_close_matches(item, allowed, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise DermsortError(f"unknown {what} {item!r}{hint}; choose from {', '.join(allowed)}")
        if item not in out:
            out.append(item)
    if not out:
        raise DermsortError(f"no {what} given; choose from {', '.join(allowed)}")
    return out


def select(toolkits: list[str], precisions: list[str]) -> list[Target]:
    """The targets for a request; the FP32 ONNX reference is always first (everything derives from it)."""
    chosen = [t for t in TARGETS if t.toolkit in toolkits and t.precision in precisions and t.name != REFERENCE]
    return [target(REFERENCE), *chosen]


# ----------------------------------------------------------------------------- builders


@dataclass
class BuildJob:
    """What a builder gets: the bundle folder being written, the FP32 reference in it, and the images."""

    work: Path
    #: the FP32 ONNX reference, already written: every other artifact derives from it
    reference: Path
    metadata: Any
    calib_tensors: np.ndarray
    #: (tensors, malignant labels) of the gate set, or None
    labelled: tuple[np.ndarray, np.ndarray] | None
    accuracy_control: str
    tolerances: Any
    target_sensitivity: float
    say: Callable[[str], None]


@dataclass
class Built:
    """What a builder reports besides the files it wrote (all optional)."""

    #: extra fields of the artifact's manifest record (TensorRT: ``built_for``)
    artifact: dict[str, Any] = field(default_factory=dict)
    #: what quantization did, for the manifest and the report
    quantization: dict[str, Any] | None = None
    #: build facts (TensorRT: profile, flags), kept in the artifact's parity record
    build: dict[str, Any] | None = None


class Skip(Exception):
    """Raised by a builder whose target cannot be built on this machine: skipped with this reason, not failed."""


Builder = Callable[[BuildJob, Target], "Built | None"]
Ready = Callable[[], "tuple[bool, str]"]
_BUILDERS: dict[str, tuple[Builder, Ready | None]] = {}


def builds(*names: str, ready: Ready | None = None) -> Callable[[Builder], Builder]:
    """Register the decorated function as the builder of the table rows ``names``.

    ``ready``: a check, asked once per export before any of these targets is built, returning (ok, why);
    when not ok the targets are skipped with ``why`` (TensorRT without a GPU).
    """
    def register(fn: Builder) -> Builder:
        for name in names:
            target(name)  # a builder for a row the table does not have is a mistake: KeyError at import
            _BUILDERS[name] = (fn, ready)
        return fn

    return register


def builder(row: Target) -> tuple[Builder, Ready | None]:
    """The registered builder of ``row`` (and its readiness check), importing its module now."""
    importlib.import_module(row.module)
    try:
        return _BUILDERS[row.name]
    except KeyError:
        raise DermsortError(f"no exporter registered for {row.name} (expected @builds({row.name!r}) "
                            f"in {row.module})") from None
