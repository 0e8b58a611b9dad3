"""The Backend interface and the registry that maps backend names to implementations.

Backends register through the ``dermsort.backends`` entry-point group (setup.cfg), so the runtime
finds the torch reference backend without importing train/ or torch itself. A new backend is one
module (a ``Backend`` subclass with its ``BackendSpec``) plus its entry-point line: everything else
(the CLI's list, the install advice) is read from those two.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any, ClassVar

import numpy as np

from ..bundle import Artifact, Bundle
from ..metadata import PreprocessSpec
from ..errors import BackendUnavailable, DermsortError, ModelError

log = logging.getLogger(__name__)

#: modules of this package that hold no backend (skipped when the package is scanned for backends)
_NOT_BACKENDS = frozenset({"base"})


@dataclass(frozen=True)
class BackendSpec:
    """A row of the capability table: what a backend is, what it loads and how to get it."""

    name: str
    formats: tuple[str, ...]
    extra: str
    description: str
    #: the import name of the library it runs on: whether it is installed is read from the package
    #: metadata (``find_spec`` / ``importlib.metadata``) without importing it
    library: str = ""
    #: may ``sort`` / ``watch`` / ``auto`` run it (False: a reference for bench/evaluate only)
    sorts: bool = True
    #: what to install when it is missing (default: the extra named by ``extra``)
    install: str = ""

    @property
    def hint(self) -> str:
        """The install advice shown when the backend is not installed."""
        return self.install or f'pip install "dermsort[{self.extra}]"'


#: metadata fields that change a decision: the manifest must agree with the model file on each
DECISION_FIELDS = ("model_id", "classes", "malignant_classes", "threshold", "preprocess", "output", "gate")


def inference_streams(threads: int | None) -> tuple[int, int]:
    """(streams, threads per stream) for a CPU backend: how many parts of a batch run at once, each on its own
    threads. A small model on few cores spends much of an all-core call synchronising its threads (and they
    share the cores with the decode threads): two single-threaded halves of a batch of 4 cost ~10-20 % less CPU
    than one call on both cores (docs/BENCHMARKS.md, issue 26). ``threads`` given (``--threads``): one stream
    on that many threads, as before. ``DERMSORT_INFER_STREAMS`` overrides the number of streams."""
    cpus = os.cpu_count() or 1
    if threads:
        return 1, int(threads)
    try:
        streams = int(os.environ.get("DERMSORT_INFER_STREAMS", "0"))
    except ValueError:
        streams = 0
    streams = max(1, min(cpus, streams or min(cpus, 4)))
    return streams, max(1, cpus // streams)


def split_batch(batch: np.ndarray, parts: int) -> list[np.ndarray]:
    """``batch`` in at most ``parts`` contiguous pieces of nearly equal size (none empty)."""
    parts = max(1, min(parts, len(batch)))
    return [p for p in np.array_split(batch, parts) if len(p)]


class Backend(ABC):
    """Loads one artifact and turns a batch of preprocessed images into class probabilities.

    Lifecycle: ``available()`` (class-level, cheap) -> ``load()`` -> ``predict()``... -> ``close()``.
    """

    spec: ClassVar[BackendSpec]
    #: may the sorter call ``infer`` from its inference thread (while it places the previous batch)? CPU
    #: libraries take calls from any thread (one at a time); a backend bound to the thread that loaded it says no
    infer_off_thread: ClassVar[bool] = True

    def __init__(self, bundle: Bundle, artifact: Artifact, device: str | None = None, threads: int | None = None):
        self.bundle = bundle
        self.artifact = artifact
        self.metadata = bundle.metadata
        self.device = device
        self.threads = threads
        self._loaded = False

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(True, version/device info) or (False, why not and how to fix it)."""

    #: the metadata JSON embedded in the artifact itself (ONNX metadata_props / OpenVINO rt_info), set by
    #: ``_load_impl`` where the format carries it; cross-checked against the manifest on load
    embedded_metadata: str | None = None
    #: the per-artifact record (ARTIFACT_RECORD_KEY: each artifact's threshold and gate verdict) embedded in the
    #: same place; None in a bundle exported before it existed, and in formats that carry none (TensorRT)
    embedded_artifacts: str | None = None
    #: what the load-time cross-check found: "ok" (thresholds embedded and equal), "not embedded" (older
    #: bundle, or a format without metadata): the CLI warns about the latter unless a trusted key signed it
    embedded_check: str = "not embedded"

    def load(self) -> "Backend":
        if not self._loaded:
            self._load_impl()
            self._check_embedded()
            self._check_embedded_artifact()
            self._loaded = True
        return self

    def _check_embedded(self) -> None:
        """The manifest's decision fields must equal the ones baked into the (checksummed) model file."""
        if not self.embedded_metadata:
            return
        try:
            inner = json.loads(self.embedded_metadata)
        except ValueError:
            raise ModelError(f"{self.artifact.path}: its embedded metadata is not readable JSON") from None
        outer = self.metadata.to_dict()
        if isinstance(inner.get("preprocess"), dict):
            # a model file written before a preprocessing field existed (e.g. color_constancy) means its default
            inner["preprocess"] = {**dataclasses.asdict(PreprocessSpec()), **inner["preprocess"]}
        differ = [k for k in DECISION_FIELDS if k in inner and inner[k] != outer.get(k)]
        if differ:
            raise ModelError(f"the manifest's {', '.join(differ)} differ from the metadata inside {self.artifact.path} "
                             "(edited manifest?); refusing to run it - re-export or reinstall the model")

    def _check_embedded_artifact(self) -> None:
        """The threshold the sorter applies (the manifest's ``artifacts[*].threshold``) and the gate verdict must
        equal the ones the export wrote into the model file itself."""
        if not self.embedded_artifacts:
            self.embedded_check = "not embedded"
            return
        name, path = self.artifact.name, self.artifact.path
        try:
            record = json.loads(self.embedded_artifacts)[name]
            embedded_threshold = float(record["threshold"])
            embedded_rejected = bool(record["rejected"])
        except (ValueError, KeyError, TypeError):
            raise ModelError(f"{path} carries no readable threshold for artifact {name} (renamed or edited "
                             "manifest?); refusing to run it - re-export or reinstall the model") from None
        if embedded_threshold != float(self.artifact.threshold):
            raise ModelError(f"the manifest's threshold {self.artifact.threshold:.6g} for {name} differs from the "
                             f"threshold {embedded_threshold:.6g} inside {path} (edited manifest?); refusing to run "
                             "it - re-export or reinstall the model")
        if embedded_rejected != self.artifact.rejected:
            raise ModelError(f"the manifest's parity-gate verdict for {name} differs from the one inside {path} "
                             "(edited manifest?); refusing to run it - re-export or reinstall the model")
        self.embedded_check = "ok"

    @abstractmethod
    def _load_impl(self) -> None: ...

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, n_classes) probabilities."""
        return self.infer(batch)[0]

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 3, H, W) float32 -> ((N, n_classes) probabilities, (N,) gate scores or None without a gate)."""
        if not self._loaded:
            self.load()
        if batch.ndim != 4 or batch.dtype != np.float32:
            raise ValueError(f"expected a float32 NCHW batch, got {batch.dtype} {batch.shape}")
        out = np.asarray(self._predict_impl(np.ascontiguousarray(batch)), dtype=np.float64)
        n_classes = len(self.metadata.classes)
        if out.ndim != 2 or out.shape[1] != self.metadata.output_width:
            raise ModelError(f"{self.artifact.path} outputs shape {out.shape}, the metadata says "
                             f"{self.metadata.output_width} columns ({n_classes} classes"
                             f"{' + gate' if self.metadata.gate.enabled else ''})")
        gate = out[:, n_classes].copy() if self.metadata.gate.enabled else None
        out = out[:, :n_classes]
        if self.metadata.output == "logits":
            out = out - out.max(axis=1, keepdims=True)
            out = np.exp(out)
            out /= out.sum(axis=1, keepdims=True)
        return out, gate

    @abstractmethod
    def _predict_impl(self, batch: np.ndarray) -> np.ndarray: ...

    def p_malignant(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities[:, self.metadata.malignant_indices()].sum(axis=1)

    @property
    def max_batch(self) -> int:
        return 32

    def describe(self) -> dict[str, Any]:
        return {"backend": self.spec.name, "artifact": self.artifact.name, "precision": self.artifact.precision,
                "device": self.device or "cpu"}

    def close(self) -> None:
        self._loaded = False

    def __enter__(self) -> "Backend":
        return self.load()

    def __exit__(self, *exc: Any) -> None:
        self.close()


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, str]:
    # read once per process: scanning every installed distribution's entry points costs ~15 ms a time
    found: dict[str, str] = {}
    try:
        for ep in importlib_metadata.entry_points(group="dermsort.backends"):
            found[ep.name] = ep.value
    except Exception:  # pragma: no cover - broken metadata should not stop the runtime
        log.debug("could not read dermsort.backends entry points", exc_info=True)
    if not any(value.startswith(f"{__package__}.") for value in found.values()):
        # dermsort's own metadata is not installed (running from a source tree): find this package's backends
        found = {**_package_backends(), **found}
    return found


def _package_backends() -> dict[str, str]:
    """name -> 'module:Class' for the Backend subclasses defined in this package's modules (imports them:
    they import their libraries only when loading a model)."""
    import pkgutil

    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        if info.name in _NOT_BACKENDS:
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Backend) and value.__module__ == module.__name__
                    and isinstance(getattr(value, "spec", None), BackendSpec)):
                found[value.spec.name] = f"{module.__name__}:{value.__name__}"
    return found


def runtime_backends() -> list[str]:
    """Registered backends implemented in this package (the ones ``sort`` / ``watch`` offer by name; the torch
    reference registers from train/). Reads the registry only: imports no backend."""
    return [name for name, value in list_backends().items() if value.startswith(f"{__package__}.")]


def list_backends() -> dict[str, str]:
    """Registered backend names -> 'module:Class' (not imported yet)."""
    return dict(_entry_points())


def get_backend_class(name: str) -> type[Backend] | None:
    """The class for ``name``, or None when its module cannot be imported (optional extra missing)."""
    target = list_backends().get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except ImportError:
        return None


def library_version(library: str) -> str | None:
    """The installed version of ``library`` (an import name) from package metadata, or None; imports nothing."""
    try:
        if importlib.util.find_spec(library) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib_metadata.version(library)
    except importlib_metadata.PackageNotFoundError:
        # e.g. onnxruntime-gpu provides the import name onnxruntime
        for dist in importlib_metadata.packages_distributions().get(library, []):
            try:
                return importlib_metadata.version(dist)
            except importlib_metadata.PackageNotFoundError:
                continue
    return "unknown"


def backend_installed(name: str) -> tuple[bool, str]:
    """(installed, detail) for a registered backend from package metadata alone: its library is not imported,
    so ``auto`` and ``info`` pay only for the backend that will run."""
    cls = get_backend_class(name)
    if cls is None:
        return False, "not installed: " + ("unknown backend" if name not in list_backends()
                                           else f"{list_backends()[name]} cannot be imported")
    if not cls.spec.library:
        return True, "built in"
    version = library_version(cls.spec.library)
    if version is None:
        return False, f"not installed: {cls.spec.hint}"
    return True, f"{cls.spec.library} {version} installed"


def backend_status(name: str) -> tuple[bool, str]:
    """(available, reason) for a registered backend, without loading any model: imports its library
    and asks it (devices, GPU); use ``backend_installed`` where an import is not wanted."""
    ok, why = backend_installed(name)
    if not ok:
        return ok, why
    cls = get_backend_class(name)
    assert cls is not None
    try:
        return cls.available()
    except Exception as exc:  # an optional library that imports but cannot start
        return False, f"unavailable: {exc}"


def create_backend(name: str, bundle: Bundle, artifact: Artifact, **kw: Any) -> Backend:
    names = list_backends()
    if name not in names:
        raise DermsortError(f"unknown backend {name!r}; choose one of: auto, {', '.join(sorted(names))}")
    # metadata only: a backend that is installed but cannot start fails in load(), which says why
    ok, why = backend_installed(name)
    if not ok:
        raise BackendUnavailable(f"backend {name} is not available here: {why}")
    cls = get_backend_class(name)
    assert cls is not None
    if artifact.format not in cls.spec.formats:
        raise BackendUnavailable(f"backend {name} cannot load {artifact.name} ({artifact.format})")
    return cls(bundle, artifact, **kw)
