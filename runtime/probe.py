"""The machine profile that ``auto`` reads, and the short probe that writes it when nothing valid is known.

A profile entry (per model, per host) holds a fastest-first ranking of (backend, artifact) and what it
is valid for: the model's artifacts (their checksums) and the installed library versions, read from
package metadata (nothing is imported to check). An entry goes stale when either changes.

The probe screens its candidates with one timed call each (those over twice the fastest cannot win),
interleaves the rest round by round (A B C, B C A, ...), takes the median time per candidate, stops
after ``PROBE_BUDGET_S`` (at least ``PROBE_MIN_ROUNDS`` rounds, never past ``PROBE_CAP_S``) and records
the load average it ran under. A probe taken on a busy machine is marked noisy; it is used until the
machine is quiet again, when a new probe replaces it. A ``dermsort bench`` entry is never replaced by a
probe while it is valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import Backend, get_backend_class, library_version
from .bundle import Bundle
from .caches import cache_dir

log = logging.getLogger(__name__)

#: seconds of interleaved rounds among the candidates that survive the screen (at least PROBE_MIN_ROUNDS) ...
PROBE_BUDGET_S = 0.25
PROBE_MIN_ROUNDS = 3
#: ... but never past this (seconds since the rounds began), even with fewer rounds: a busy machine
#: makes every call slower, and such a probe is marked noisy and replaced once the machine is quiet
PROBE_CAP_S = 0.5
PROBE_MAX_ROUNDS = 200
#: images per call in the rounds: half the sort's default --batch-size (8), so a folder's steady state
#: is what is ranked (a TTA model runs each image and its mirror inside the graph)
PROBE_BATCH = 4
#: after one timed one-image call each, a candidate slower than this many times the fastest cannot win
SCREEN_RATIO = 2.0
#: a 1-minute load average per logical CPU above this makes a measurement noisy
NOISY_LOAD_PER_CPU = 0.5


def host_id() -> str:
    return f"{socket.gethostname()}-{platform.machine()}"


def profile_path() -> Path:
    return cache_dir() / f"profile-{host_id()}.json"


def load_profile() -> dict[str, Any]:
    try:
        data = json.loads(profile_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def machine_load() -> dict[str, Any]:
    """The load this process measures under: 1/5/15-minute load averages and whether that is noisy."""
    cpus = os.cpu_count() or 1
    try:
        avg = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return {"loadavg": None, "cpus": cpus, "per_cpu": None, "noisy": False}
    per_cpu = round(avg[0] / cpus, 3)
    return {"loadavg": avg, "cpus": cpus, "per_cpu": per_cpu, "noisy": per_cpu > NOISY_LOAD_PER_CPU}


def model_fingerprint(bundle: Bundle) -> str:
    """Changes when any artifact (file, threshold, gate verdict) of the bundle changes."""
    rows = sorted((a.name, a.sha256, a.precision, round(a.threshold, 8), a.accepted) for a in bundle.artifacts)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def library_versions(backends: list[str] | set[str]) -> dict[str, str | None]:
    """Installed version of each backend's library, from metadata (nothing imported)."""
    out: dict[str, str | None] = {}
    for name in sorted(backends):
        cls = get_backend_class(name)
        lib = cls.spec.library if cls is not None else ""
        out[name] = library_version(lib) if lib else None
    return out


def _candidates(bundle: Bundle, ranking: list[dict[str, Any]]) -> set[str]:
    """Every backend that could run one of the bundle's artifacts: a profile measured before one of them
    was installed (or another environment's profile) must not keep `auto` on a slower one."""
    return {r["backend"] for r in ranking} | {a.backend for a in bundle.artifacts}


def validity(bundle: Bundle, ranking: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": model_fingerprint(bundle), "versions": library_versions(_candidates(bundle, ranking))}


def stale_reason(entry: dict[str, Any], bundle: Bundle) -> str:
    """Why a stored entry no longer describes this model on this software ('' when it still does)."""
    valid_for = entry.get("valid_for")
    if not isinstance(valid_for, dict):
        return "no model/version record (written by an older dermsort)"
    if valid_for.get("model") != model_fingerprint(bundle):
        return "the model's artifacts changed"
    ranking = entry.get("ranking") or []
    now = library_versions(_candidates(bundle, ranking))
    changed = [f"{b} {valid_for.get('versions', {}).get(b) or 'not installed'} -> {v or 'not installed'}"
               for b, v in now.items() if valid_for.get("versions", {}).get(b) != v]
    return ("backends installed or their versions changed: " + ", ".join(changed)) if changed else ""


def save_profile(bundle: Bundle, ranking: list[dict[str, Any]], source: str,
                 load: dict[str, Any] | None = None, probe: dict[str, Any] | None = None) -> Path:
    """Record the fastest-first ranking of (backend, artifact) for ``bundle`` on this host.

    ``source`` is "bench" (``dermsort bench``) or "probe" (the runtime's probe). A probe never replaces a
    bench entry that is still valid; callers decide the rest (see ``engine._rank``).
    """
    path = profile_path()
    data = load_profile()
    data.setdefault("host", host_id())
    models = data.setdefault("models", {})
    old = models.get(bundle.model_id)
    if source == "probe" and isinstance(old, dict) and old.get("source") == "bench" and not stale_reason(old, bundle):
        return path
    entry: dict[str, Any] = {"source": source, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ranking": ranking,
                             "valid_for": validity(bundle, ranking), "load": load or machine_load()}
    if probe:
        entry["probe"] = probe
    models[bundle.model_id] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profile.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home must not stop sorting
        log.warning("could not write machine profile %s: %s", path, exc)
    return path


def probe(backends: list[Backend], input_size: int, budget_s: float = PROBE_BUDGET_S,
          min_rounds: int = PROBE_MIN_ROUNDS, cap_s: float = PROBE_CAP_S) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rank loaded backends, fastest first: one row per backend (``index`` into ``backends``,
    ``median_call_ms`` over the rounds at ``PROBE_BATCH`` images, ``screen_ms`` of one image); and how.

    One warm-up call each, then one timed call each with one image (the screen: a candidate over
    ``SCREEN_RATIO`` x the fastest cannot win and is ranked after the rest by that time), then rounds
    over the rest at ``PROBE_BATCH`` images: each round times one call of every one, starting one further
    along each round, so a burst of load hits all of them alike; the median of the rounds drops the bursts.
    """
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, input_size, input_size)).astype(np.float32)
    batch = rng.standard_normal((PROBE_BATCH, 3, input_size, input_size)).astype(np.float32)
    began = time.perf_counter()
    for backend in backends:
        backend.predict(one)  # warm-up: graph optimisation, memory pools
    screen = []
    for backend in backends:
        t0 = time.perf_counter()
        backend.predict(one)
        screen.append(time.perf_counter() - t0)
    fastest = min(screen)
    live = [i for i, t in enumerate(screen) if t <= SCREEN_RATIO * fastest]
    times: dict[int, list[float]] = {i: [] for i in live}
    start = time.perf_counter()
    rounds = 0
    while rounds < PROBE_MAX_ROUNDS and len(live) > 1:
        elapsed = time.perf_counter() - start
        if (rounds >= min_rounds and elapsed >= budget_s) or (rounds >= 1 and elapsed >= cap_s):
            break
        for k in range(len(live)):
            i = live[(k + rounds) % len(live)]
            t0 = time.perf_counter()
            backends[i].predict(batch)
            times[i].append(time.perf_counter() - t0)
        rounds += 1
    rows = [{"index": i, "screen_ms": round(screen[i] * 1000, 3), "measured": i in live and rounds > 0,
             "median_call_ms": round(statistics.median(times[i]) * 1000, 3) if times.get(i) else None}
            for i in range(len(backends))]
    # measured ones by their median; then (one survivor, or screened out) by the one-image screen time
    rows.sort(key=lambda r: (not r["measured"], r["median_call_ms"] if r["measured"] else r["screen_ms"]))
    return rows, {"rounds": rounds, "seconds": round(time.perf_counter() - began, 3), "batch": PROBE_BATCH,
                  "budget_s": budget_s, "cap_s": cap_s, "screened_out": len(backends) - len(live)}
