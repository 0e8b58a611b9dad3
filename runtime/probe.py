"""The machine profile that ``auto`` reads, and the short probe that writes it when nothing valid is known.

A profile entry (per model, per host, per Python environment: one file each, so two virtual environments
on one machine never overwrite each other's ranking) holds a fastest-first ranking of (backend, artifact)
and what it is valid for: the bundle (model id and the checksums of its artifacts) and the installed
library version of every backend that could run one of its artifacts (``None``: not installed), read from
package metadata (nothing is imported to check). An entry goes stale when any of these changes: a
backend installed, removed or upgraded, or another bundle.

The probe screens its candidates with one timed call each (those over twice the fastest cannot win),
interleaves the rest round by round (A B C, B C A, ...), takes the median time per candidate, stops
after ``PROBE_BUDGET_S`` (at least ``PROBE_MIN_ROUNDS`` rounds, never past ``PROBE_CAP_S``) and records
the load average it ran under. A probe taken on a busy machine is marked noisy; it is used until the
machine is quiet again, when a new probe replaces it. A ``dermsort bench`` entry is never replaced by a
probe while it is valid, unless the bench itself ran on a busy machine; and a bench on a busy machine
never replaces a valid entry measured on a quiet one (it is kept beside it, as ``noisy_bench``, for the
record): measured under load, a bench once switched ``auto`` to a backend that is slower when quiet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import statistics
import sys
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


def environment_id() -> str:
    """This Python environment: its prefix and interpreter version (a venv with other backends installed,
    or another Python, is another environment with its own profile file)."""
    text = f"{os.path.realpath(sys.prefix)}|{sys.implementation.name}-{sys.version_info[0]}.{sys.version_info[1]}"
    return f"py{sys.version_info[0]}{sys.version_info[1]}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def profile_path() -> Path:
    return cache_dir() / f"profile-{host_id()}-{environment_id()}.json"


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


class LoadWatch:
    """How busy *other* processes kept this machine's CPUs while a measurement ran (Linux: /proc/stat minus
    this process's own CPU time), so a long measurement that loads the machine itself is not called noisy.

    ``start()`` then ``finish()``: ``machine_load()`` at the start, plus ``others_per_cpu`` (0..1, None where
    /proc/stat is missing); noisy when either the load at the start or the others' share says so."""

    def start(self) -> "LoadWatch":
        self.load = machine_load()
        self._t0, self._busy0, self._own0 = time.monotonic(), _busy_seconds(), _own_cpu_seconds()
        return self

    def finish(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        busy1 = _busy_seconds()
        out = dict(self.load)
        if self._busy0 is not None and busy1 is not None and wall > 0:
            others = max(0.0, (busy1 - self._busy0) - (_own_cpu_seconds() - self._own0))
            out["others_per_cpu"] = round(others / wall / out["cpus"], 3)
            out["noisy"] = bool(out["noisy"] or out["others_per_cpu"] > NOISY_LOAD_PER_CPU)
        out["end_loadavg"] = machine_load()["loadavg"]
        return out


def _busy_seconds() -> float | None:
    """Seconds all CPUs spent not idle since boot (None off Linux)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


def _own_cpu_seconds() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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
    return {"bundle": bundle.model_id, "model": model_fingerprint(bundle), "environment": environment_id(),
            "versions": library_versions(_candidates(bundle, ranking))}


def stale_reason(entry: dict[str, Any], bundle: Bundle) -> str:
    """Why a stored entry no longer describes this model on this software ('' when it still does)."""
    valid_for = entry.get("valid_for")
    if not isinstance(valid_for, dict):
        return "no model/version record (written by an older dermsort)"
    if valid_for.get("bundle", bundle.model_id) != bundle.model_id:
        return f"measured for another bundle ({valid_for.get('bundle')})"
    if valid_for.get("model") != model_fingerprint(bundle):
        return "the model's artifacts changed"
    if valid_for.get("environment", environment_id()) != environment_id():
        return f"measured in another Python environment ({valid_for.get('environment')})"
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
    load = load or machine_load()
    entry: dict[str, Any] = {"source": source, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ranking": ranking,
                             "valid_for": validity(bundle, ranking), "load": load}
    if probe:
        entry["probe"] = probe
    if isinstance(old, dict) and not stale_reason(old, bundle):
        old_quiet = not (old.get("load") or {}).get("noisy")
        if source == "probe" and old.get("source") == "bench" and (old_quiet or load.get("noisy")):
            return path  # a valid bench is replaced only by a quiet probe, and only when it ran under load
        if source == "bench" and load.get("noisy") and old_quiet:
            # a bench on a busy machine does not replace a ranking measured on a quiet one: kept for the record
            old["noisy_bench"] = entry
            entry = old
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
          min_rounds: int = PROBE_MIN_ROUNDS, cap_s: float = PROBE_CAP_S, by_cpu: bool | None = None
          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rank loaded backends, fastest first: one row per backend (``index`` into ``backends``,
    ``median_call_ms`` over the rounds at ``PROBE_BATCH`` images, ``screen_ms`` of one image); and how.

    One warm-up call each, then one timed call each with one image (the screen: a candidate over
    ``SCREEN_RATIO`` x the fastest cannot win and is ranked after the rest by that time), then rounds
    over the rest at ``PROBE_BATCH`` images: each round times one call of every one, starting one further
    along each round, so a burst of load hits all of them alike; the median of the rounds drops the bursts.

    ``by_cpu`` (default: when the machine is busy now): rank by the CPU time this process spent in each call
    (every backend here runs on all cores, and time spent descheduled by other programs is not counted), not
    by wall time, which on a busy machine says more about the other programs than about the backends.
    """
    if by_cpu is None:
        by_cpu = bool(machine_load()["noisy"])
    clock = time.process_time if by_cpu else time.perf_counter
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, input_size, input_size)).astype(np.float32)
    batch = rng.standard_normal((PROBE_BATCH, 3, input_size, input_size)).astype(np.float32)
    began = time.perf_counter()
    for backend in backends:
        backend.predict(one)  # warm-up: graph optimisation, memory pools
    screen = []
    for backend in backends:
        t0 = clock()
        backend.predict(one)
        screen.append(clock() - t0)
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
            t0 = clock()
            backends[i].predict(batch)
            times[i].append(clock() - t0)
        rounds += 1
    rows = [{"index": i, "screen_ms": round(screen[i] * 1000, 3), "measured": i in live and rounds > 0,
             "median_call_ms": round(statistics.median(times[i]) * 1000, 3) if times.get(i) else None}
            for i in range(len(backends))]
    # measured ones by their median; then (one survivor, or screened out) by the one-image screen time
    rows.sort(key=lambda r: (not r["measured"], r["median_call_ms"] if r["measured"] else r["screen_ms"]))
    return rows, {"rounds": rounds, "seconds": round(time.perf_counter() - began, 3), "batch": PROBE_BATCH,
                  "budget_s": budget_s, "cap_s": cap_s, "screened_out": len(backends) - len(live),
                  "clock": "cpu" if by_cpu else "wall"}
