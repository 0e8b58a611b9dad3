"""Choosing and loading a backend for a bundle, including ``auto`` (fastest available here).

``auto`` uses the machine profile (runtime/probe.py) written by ``dermsort bench`` or by an earlier
probe for this host, model and library versions if a valid one exists, else a short probe whose result
is cached the same way. Which backends are installed is read from package metadata, so only the backend
that will run is imported (a probe imports those it measures, once).
"""

from __future__ import annotations

import logging
import time

from .backends.base import Backend, backend_installed, backend_status, create_backend, get_backend_class, list_backends
from .bundle import Artifact, Bundle
from .caches import compiled_cache_dir, cpu_fingerprint  # noqa: F401 - re-exported (tests, callers)
from .errors import BackendUnavailable, DermsortError
from .probe import (cache_dir, host_id, load_profile, machine_load, profile_path,  # noqa: F401 - re-exported
                    save_profile, stale_reason)
from .probe import probe as measure

log = logging.getLogger(__name__)

#: tried first when nothing is known about this machine: the reference and the most portable
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8")


def compatible(backend: str, artifact: Artifact) -> bool:
    cls = get_backend_class(backend)
    return cls is not None and artifact.format in cls.spec.formats


def sorts(backend: str) -> bool:
    """May ``backend`` make sort decisions (not the torch reference)? Imports its class (not its library)."""
    cls = get_backend_class(backend)
    return cls is not None and cls.spec.sorts


def sorting_backends() -> list[str]:
    """Registered backends that may make sort decisions. Imports every backend class: not for sort's path
    (the torch one lives in train/), which asks ``sorts`` only about the backends it meets."""
    return [b for b in list_backends() if sorts(b)]


def _refuse_reference_backend(backend: str) -> None:
    cls = get_backend_class(backend) if backend != "auto" else None
    if cls is not None and not cls.spec.sorts:
        raise DermsortError(f"backend {backend} is a reference for `dermsort bench` / `dermsort evaluate`, not for "
                            f"sorting; export the checkpoint (`dermsort export`) and sort with the bundle")


def candidates(bundle: Bundle, backend: str = "auto", precision: str = "auto",
               allow_rejected: bool = False) -> list[tuple[str, Artifact]]:
    """(backend, artifact) pairs that may run: accepted artifacts (rejected ones only when explicitly allowed),
    matching the request, in a sane order.

    ``auto`` runs each artifact on the backend it was made and gated for (``Artifact.backend``): the parity
    gate judged that pair, not e.g. OpenVINO running an ONNX file quantised for ONNX Runtime. A named
    backend may run any artifact in a format it reads, its own first.
    """
    names = list(list_backends())
    if backend != "auto" and backend not in names:
        raise DermsortError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(sorted(names))}")
    _refuse_reference_backend(backend)
    if precision not in ("auto", *PRECISION_ORDER):
        raise DermsortError(f"unknown precision {precision!r}; choose one of: auto, {', '.join(PRECISION_ORDER)}")
    arts = [a for a in bundle.artifacts if not a.rejected or allow_rejected]
    if precision != "auto":
        arts = [a for a in arts if a.precision == precision]
    arts.sort(key=lambda a: PRECISION_ORDER.index(a.precision) if a.precision in PRECISION_ORDER else 9)
    if backend == "auto":
        return [(a.backend, a) for a in arts if a.backend in names and sorts(a.backend) and compatible(a.backend, a)]
    # a backend prefers artifacts made for it (OpenVINO IR over ONNX for openvino)
    own = [a for a in arts if a.backend == backend] + [a for a in arts if a.backend != backend]
    return [(backend, a) for a in own if compatible(backend, a)]


def open_backend(bundle: Bundle, backend: str = "auto", precision: str = "auto", artifact_name: str | None = None,
                 threads: int | None = None, probe: bool = True, allow_rejected: bool = False) -> Backend:
    """Verify, load and return the backend that will make the decisions (only its library is imported,
    unless ``auto`` has to probe)."""
    _refuse_reference_backend(backend)
    if artifact_name:
        art = bundle.get(artifact_name)
        if art.rejected and not allow_rejected:
            raise DermsortError(f"artifact {art.name} was REJECTED by the export's parity gate; refusing to run it "
                                "(use --allow-rejected-artifact to run it anyway)")
        # auto runs a named artifact on the backend its gate ran it on
        if backend == "auto":
            _refuse_reference_backend(art.backend)
        pairs = [(b, art) for b in [art.backend if backend == "auto" else backend] if sorts(b) and compatible(b, art)]
    else:
        pairs = candidates(bundle, backend, precision, allow_rejected)
    if not pairs and not artifact_name and not allow_rejected:
        held_back = [a.name for _, a in candidates(bundle, backend, precision, allow_rejected=True)]
        if held_back:
            raise DermsortError(f"the only artifact(s) for this request ({', '.join(dict.fromkeys(held_back))}) were "
                                "REJECTED by the export's parity gate; use --allow-rejected-artifact to run one anyway")
    if not pairs:
        wanted = f"backend {backend}" + (f" at {precision}" if precision != "auto" else "")
        hint = ("; TensorRT engines are built on the device that runs them: `dermsort export-engines BUNDLE`"
                if backend == "tensorrt" else "")
        raise BackendUnavailable(f"the model bundle has no artifact for {wanted} "
                                 f"(has: {', '.join(f'{a.name}' for a in bundle.artifacts)}){hint}")
    if backend != "auto":
        ok, why = backend_status(backend)  # imports the one backend asked for, to say why it cannot run
        if not ok:
            raise BackendUnavailable(f"backend {backend} is not available here: {why}")
    usable = [(b, a) for b, a in pairs if backend_installed(b)[0]]
    if not usable:
        raise BackendUnavailable("no backend can run this model here: "
                                 + "; ".join(f"{b}: {backend_installed(b)[1]}" for b in sorted({b for b, _ in pairs})))
    loaded: dict[tuple[str, str], Backend] = {}
    if backend == "auto" and len(usable) > 1:
        usable, loaded = _rank(bundle, usable, threads, probe)
    errors = []
    try:
        for b, art in usable:
            if (b, art.name) in loaded:
                return loaded.pop((b, art.name))
            bundle.verify(art)
            try:
                return create_backend(b, bundle, art, threads=threads).load()
            except DermsortError:
                raise
            except Exception as exc:  # e.g. an engine built for another GPU: try the next one
                errors.append(f"{b}/{art.name}: {exc}")
                # info, not warning: when nothing else loads, the error below says the same in one line
                log.info("backend %s could not load %s: %s", b, art.name, exc)
    finally:
        for other in loaded.values():  # probed but not chosen
            other.close()
    raise BackendUnavailable("no backend could load the model: " + "; ".join(errors))


def _rank(bundle: Bundle, pairs: list[tuple[str, Artifact]], threads: int | None, probe: bool
          ) -> tuple[list[tuple[str, Artifact]], dict[tuple[str, str], Backend]]:
    """``pairs`` fastest first, from a valid profile entry or a new probe; and the backends a probe left loaded."""
    entry = load_profile().get("models", {}).get(bundle.model_id)
    reprobe = ""
    if isinstance(entry, dict):
        reprobe = stale_reason(entry, bundle)
        if not reprobe and (entry.get("load") or {}).get("noisy"):
            now = machine_load()
            if not now["noisy"]:  # a probe (or bench) taken under load is replaced once the machine is quiet
                reprobe = (f"the last {entry.get('source', 'probe')} ran under load {entry['load'].get('loadavg')}, "
                           f"now {now['loadavg']}")
        if not reprobe:
            order = {(r["backend"], r["artifact"]): i for i, r in enumerate(entry.get("ranking", []))}
            known = [p for p in pairs if (p[0], p[1].name) in order]
            if known:
                known.sort(key=lambda p: order[(p[0], p[1].name)])
                return known + [p for p in pairs if p not in known], {}
            reprobe = "no ranked artifact of the profile can run"
    if not probe:
        return pairs, {}
    if reprobe:
        log.info("re-probing the backends: %s", reprobe)
    return _probe_and_save(bundle, pairs, threads)


def _probe_and_save(bundle: Bundle, pairs: list[tuple[str, Artifact]], threads: int | None
                    ) -> tuple[list[tuple[str, Artifact]], dict[tuple[str, str], Backend]]:
    load = machine_load()
    loaded: dict[tuple[str, str], Backend] = {}
    load_s: dict[tuple[str, str], float] = {}
    for b, art in pairs:
        try:
            bundle.verify(art)
            t0 = time.perf_counter()
            loaded[(b, art.name)] = create_backend(b, bundle, art, threads=threads).load()
            load_s[(b, art.name)] = time.perf_counter() - t0
        except DermsortError:
            for other in loaded.values():
                other.close()
            raise
        except Exception as exc:
            log.info("probe of %s/%s failed: %s", b, art.name, exc)
    if not loaded:
        return pairs, {}
    keys = list(loaded)
    try:
        rows, how = measure([loaded[k] for k in keys], bundle.metadata.preprocess.input_size)
    except Exception as exc:  # a backend that loads but cannot run: let the load loop say why
        log.info("probe failed: %s", exc)
        for other in loaded.values():
            other.close()
        return pairs, {}
    ranking = []
    for row in rows:  # fastest first
        b, a = keys[row["index"]]
        per_s = how["batch"] * 1000 / row["median_call_ms"] if row["measured"] else 1000 / row["screen_ms"]
        ranking.append({"backend": b, "artifact": a, "images_per_s": round(per_s, 2), "measured": row["measured"],
                        "median_call_ms": row["median_call_ms"], "screen_ms": row["screen_ms"],
                        "load_s": round(load_s[(b, a)], 3)})
    save_profile(bundle, ranking, source="probe", load=load, probe=how)
    order = {(r["backend"], r["artifact"]): i for i, r in enumerate(ranking)}
    ranked = sorted(pairs, key=lambda p: order.get((p[0], p[1].name), len(order)))
    return ranked, loaded


def auto_choice(bundle: Bundle) -> tuple[tuple[str, Artifact] | None, str]:
    """What ``sort --backend auto`` would run here, without loading or probing anything (``dermsort info``):
    the (backend, artifact) and how it is known; None when the first sort's probe decides."""
    try:
        pairs = candidates(bundle)
    except DermsortError as exc:
        return None, str(exc)
    usable = [(b, a) for b, a in pairs if backend_installed(b)[0]]
    if not usable:
        return None, "no backend installed here can run this model"
    if len(usable) == 1:
        return usable[0], "the only artifact that can run here"
    entry = load_profile().get("models", {}).get(bundle.model_id)
    if isinstance(entry, dict) and not stale_reason(entry, bundle):
        for row in entry.get("ranking", []):
            for b, a in usable:
                if (b, a.name) == (row.get("backend"), row.get("artifact")):
                    return (b, a), f"first in this machine's profile ({entry.get('source', '?')})"
    return None, "decided by a probe at the first sort (no valid machine profile yet)"
