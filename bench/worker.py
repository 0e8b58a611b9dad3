"""One fresh process per measurement: cold start to first decision, end-to-end passes, peak RSS.

Run by bench/ as ``python -m dermsort.bench.worker SPEC.json``; it imports only the light runtime
(what ``dermsort sort`` imports), so the cold start and the memory are the runtime's, and backends
measured one after another cannot pollute each other. Protocol on stdout: one ``FIRST {json}``
line the moment the first decision exists (the parent stamps its wall clock on it), then one
``RESULT {json}`` line.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def _peak_rss_mb() -> float:
    """Peak resident memory of this process image.

    Linux's ``ru_maxrss`` survives fork + exec: a child of a 600 MB parent reports >= 600 MB before it
    has done anything. ``VmHWM`` belongs to the new address space, so it is the child's own peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    # elsewhere ru_maxrss is all there is (KiB on Linux, bytes on macOS)
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def dry_run_out(input_dir: Path) -> Path:
    """An output path the sorter accepts for a dry run (never created: dry runs write nothing)."""
    from dermsort.runtime.sorter import check_folders

    name = f"dermsort-bench-dry-run-{os.getpid()}"
    for base in (Path(tempfile.gettempdir()), input_dir.parent, Path.home()):
        try:
            check_folders(input_dir, base / name)
            return base / name
        except Exception:
            continue
    raise RuntimeError(f"no output folder outside {input_dir} for the dry run")


def candidates(files: list[str]) -> tuple[Path, list[Any]]:
    from dermsort.runtime.sorter import Candidate

    paths = [Path(f).resolve() for f in files]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    cands = []
    for p in paths:
        st = os.stat(p)
        cands.append(Candidate(p, st.st_size, st.st_mtime_ns))
    return root, cands


def sort_pass(root: Path, cands: list[Any], backend: Any, batch_size: int, workers: int | None) -> Any:
    """One real Sorter pass in dry-run mode: read + hash + decode (thread pool) + batched inference + decide."""
    from dermsort.runtime.sorter import SortOptions, Sorter

    opts = SortOptions(out=dry_run_out(root), dry_run=True, batch_size=batch_size, workers=workers)
    sorter = Sorter(root, opts, backend)
    sorter.open()
    try:
        return sorter.run(files=list(cands))
    finally:
        sorter.close()


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    marks: dict[str, float] = {}
    from dermsort.runtime.bundle import load_bundle
    from dermsort.runtime.engine import open_backend
    import dermsort.runtime.sorter  # noqa: F401  (part of what `dermsort sort` imports)

    marks["imports_s"] = time.perf_counter() - _T0
    bundle, _ = load_bundle(spec["bundle"])
    marks["bundle_s"] = time.perf_counter() - _T0
    # verify (sha256 of every file of the artifact) + load, exactly as `dermsort sort` does
    backend = open_backend(bundle, spec["backend"], artifact_name=spec["artifact"], threads=spec.get("threads"))
    marks["verify_and_load_s"] = time.perf_counter() - _T0
    root, cands = candidates(spec["files"])
    first = sort_pass(root, cands[:1], backend, 1, spec.get("workers"))
    marks["first_decision_s"] = time.perf_counter() - _T0
    print("FIRST " + json.dumps({"decision": first.decisions[0]["decision"] if first.decisions else None}), flush=True)
    result: dict[str, Any] = {"marks": marks, "rss_after_first_decision_mb": _peak_rss_mb(),
                              "backend": backend.describe()}
    if spec.get("mode") == "run":
        for _ in range(int(spec.get("warmup", 1))):
            sort_pass(root, cands[: max(1, spec["batch_size"])], backend, spec["batch_size"], spec.get("workers"))
        seconds, summary = [], None
        for _ in range(max(1, int(spec.get("reps", 3)))):
            summary = sort_pass(root, cands, backend, spec["batch_size"], spec.get("workers"))
            seconds.append(summary.seconds)
        result["e2e_seconds"] = seconds
        result["decisions"] = [{"file": d["file"], "decision": d["decision"], "p_malignant": d["p_malignant"],
                                "reason": d["reason"]} for d in summary.decisions]
    result["peak_rss_mb"] = _peak_rss_mb()
    backend.close()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
