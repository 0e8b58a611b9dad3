"""Choosing and loading a backend for a bundle, including ``auto`` (fastest available here).

``auto`` uses the machine profile written by ``dermsort bench`` for this host and model if one
exists, else a short on-the-spot probe whose result is cached the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend, backend_status, create_backend, get_backend_class, list_backends
from .bundle import Artifact, Bundle
from .errors import BackendUnavailable, DermsortError

log = logging.getLogger(__name__)

#: tried first when nothing is known about this machine: the reference and the most portable
PRECISION_ORDER = ("fp32", "fp16", "int8")
PROBE_SECONDS = 0.6


def cache_dir() -> Path:
    base = os.environ.get("DERMSORT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dermsort")
    return Path(base)


def compiled_cache_dir(library: str) -> Path | None:
    """Folder for models compiled/optimised by ``library`` (reused across runs), or None when disabled
    (``DERMSORT_COMPILED_CACHE=0``) or not creatable (read-only home): then every run compiles afresh."""
    if os.environ.get("DERMSORT_COMPILED_CACHE", "1").strip().lower() in ("0", "no", "off", "false"):
        return None
    path = cache_dir() / "compiled" / library
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.info("no compiled-model cache (%s): %s", path, exc)
        return None
    return path


def cpu_fingerprint() -> str:
    """Short hash of this CPU's model and instruction-set flags.

    An optimised graph may use layouts/kernels chosen for this CPU (e.g. ONNX Runtime's NCHWc blocking
    for AVX2 vs AVX-512), so a cache shared through a network home must not cross CPUs.
    """
    text = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                elif not line.strip() and "flags" in text:
                    break  # first CPU is enough
    except OSError:
        pass
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def host_id() -> str:
    return f"{socket.gethostname()}-{platform.machine()}"


def profile_path() -> Path:
    return cache_dir() / f"profile-{host_id()}.json"


def load_profile() -> dict[str, Any]:
    try:
        return json.loads(profile_path().read_text())
    except (OSError, ValueError):
        return {}


def save_profile(model_id: str, ranking: list[dict[str, Any]], source: str) -> Path:
    """Record the fastest-first ranking of (backend, artifact) for ``model_id`` on this host.

    ``source`` is "bench" (from ``dermsort bench``) or "probe" (the runtime's quick probe); a bench
    result is never replaced by a probe.
    """
    path = profile_path()
    data = load_profile()
    data.setdefault("host", host_id())
    models = data.setdefault("models", {})
    if source == "probe" and models.get(model_id, {}).get("source") == "bench":
        return path
    models[model_id] = {"source": source, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ranking": ranking}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profile.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home must not stop sorting
        log.warning("could not write machine profile %s: %s", path, exc)
    return path


def compatible(backend: str, artifact: Artifact) -> bool:
    cls = get_backend_class(backend)
    return cls is not None and artifact.format in cls.spec.formats


def candidates(bundle: Bundle, backend: str = "auto", precision: str = "auto") -> list[tuple[str, Artifact]]:
    """(backend, artifact) pairs that may run: accepted artifacts, matching the request, in a sane order."""
    names = list(list_backends())
    if backend != "auto" and backend not in names:
        raise DermsortError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(sorted(names))}")
    if precision not in ("auto", *PRECISION_ORDER):
        raise DermsortError(f"unknown precision {precision!r}; choose one of: auto, {', '.join(PRECISION_ORDER)}")
    arts = [a for a in bundle.artifacts if a.accepted or a.override]
    if precision != "auto":
        arts = [a for a in arts if a.precision == precision]
    arts.sort(key=lambda a: PRECISION_ORDER.index(a.precision) if a.precision in PRECISION_ORDER else 9)
    backends = [backend] if backend != "auto" else [b for b in names if b != "torch"]
    pairs = []
    for b in backends:
        # a backend prefers artifacts made for it (OpenVINO IR over ONNX for openvino)
        own = [a for a in arts if a.backend == b] + [a for a in arts if a.backend != b]
        pairs += [(b, a) for a in own if compatible(b, a)]
    return pairs


def open_backend(bundle: Bundle, backend: str = "auto", precision: str = "auto", artifact_name: str | None = None,
                 threads: int | None = None, probe: bool = True) -> Backend:
    """Verify, load and return the backend that will make the decisions."""
    if artifact_name:
        art = bundle.get(artifact_name)
        pairs = [(b, art) for b in ([backend] if backend != "auto" else list(list_backends())) if compatible(b, art)]
    else:
        pairs = candidates(bundle, backend, precision)
    if not pairs:
        wanted = f"backend {backend}" + (f" at {precision}" if precision != "auto" else "")
        raise BackendUnavailable(f"the model bundle has no artifact for {wanted} "
                                 f"(has: {', '.join(f'{a.name}' for a in bundle.artifacts)})")
    if backend != "auto":
        ok, why = backend_status(backend)
        if not ok:
            raise BackendUnavailable(f"backend {backend} is not available here: {why}")
    usable = [(b, a) for b, a in pairs if backend_status(b)[0]]
    if not usable:
        raise BackendUnavailable("no backend can run this model here: "
                                 + "; ".join(f"{b}: {backend_status(b)[1]}" for b in sorted({b for b, _ in pairs})))
    if backend == "auto" and len(usable) > 1:
        usable = _rank(bundle, usable, threads, probe)
    errors = []
    for b, art in usable:
        bundle.verify(art)
        try:
            return create_backend(b, bundle, art, threads=threads).load()
        except DermsortError:
            raise
        except Exception as exc:  # e.g. an engine built for another GPU: try the next one
            errors.append(f"{b}/{art.name}: {exc}")
            # info, not warning: when nothing else loads, the error below says the same in one line
            log.info("backend %s could not load %s: %s", b, art.name, exc)
    raise BackendUnavailable("no backend could load the model: " + "; ".join(errors))


def _rank(bundle: Bundle, pairs: list[tuple[str, Artifact]], threads: int | None, probe: bool) -> list[tuple[str, Artifact]]:
    entry = load_profile().get("models", {}).get(bundle.model_id)
    if entry:
        order = {(r["backend"], r["artifact"]): i for i, r in enumerate(entry.get("ranking", []))}
        known = [p for p in pairs if (p[0], p[1].name) in order]
        if known:
            known.sort(key=lambda p: order[(p[0], p[1].name)])
            return known + [p for p in pairs if p not in known]
    if not probe:
        return pairs
    ranking = []
    for b, art in pairs:
        try:
            bundle.verify(art)
            speed = _probe(create_backend(b, bundle, art, threads=threads), bundle)
        except DermsortError:
            raise
        except Exception as exc:
            log.info("probe of %s/%s failed: %s", b, art.name, exc)
            continue
        ranking.append({"backend": b, "artifact": art.name, "images_per_s": round(speed, 2)})
    ranking.sort(key=lambda r: -r["images_per_s"])
    if ranking:
        save_profile(bundle.model_id, ranking, source="probe")
    order = {(r["backend"], r["artifact"]): i for i, r in enumerate(ranking)}
    return sorted(pairs, key=lambda p: order.get((p[0], p[1].name), 99))


def _probe(backend: Backend, bundle: Bundle) -> float:
    size = bundle.metadata.preprocess.input_size
    batch = np.random.default_rng(0).standard_normal((8, 3, size, size)).astype(np.float32)
    with backend:
        backend.predict(batch)  # warm-up: graph optimisation, memory pools
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < PROBE_SECONDS or done == 0:
            backend.predict(batch)
            done += len(batch)
        return done / (time.perf_counter() - start)
