"""Where each millisecond of a whole `dermsort sort` process goes (issue 26), from the sorter's own stages.

``python -m studies.stage_profile FOLDER [--reps 3] [--out DIR] [-- SORT OPTIONS...]``

Each repetition is a fresh process that imports dermsort, wraps the runtime's stage functions with timers
(nothing in runtime/ is changed: the wrappers are installed from here, so the profile costs the runtime
nothing when it is not taken) and runs ``dermsort sort FOLDER --out NEW --json`` in-process. Every stage
records its wall time and the CPU time of the thread that ran it (``time.thread_time``), exclusive of the
stages nested in it; so for the decode threads "wall - CPU" is the time they were runnable or waiting but
did not run (the cores were busy with inference: contention), and for the main thread the stages add up
to the run. Stages:

- start-up: interpreter (spawn to first line, measured from outside), imports of ``dermsort.cli``, the
  session (bundle load + verify, backend load: ``open_backend``), sorter open (lock, journal, fsync of
  the output folders);
- decode threads: read + sha256 (``decode_one`` less the rest), decode (``open_image``: JPEG draft,
  EXIF, RGB), preprocess (resize/crop, blank check, colour constancy, normalise), thumbnail encode;
- main thread: waiting for decoded images, inference (``Backend.infer``), decision + record,
  placement (``Placer.place_batch``) split into file fsyncs, directory fsyncs, journal appends (their
  write + fsync) and the rest (copies, links), thumbnail writes, results.csv, drift, the report page.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_T_FIRST_LINE = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]


class Stages:
    """Per-stage wall and thread-CPU seconds, exclusive of nested stages (a per-thread stack)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.local = threading.local()

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        inner = getattr(owner, attr)
        stages = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = getattr(stages.local, "stack", None)
            if stack is None:
                stack = stages.local.stack = []
            stack.append([0.0, 0.0])  # time of nested stages, to subtract
            w0, c0 = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                dw, dc = time.perf_counter() - w0, time.thread_time() - c0
                nested_w, nested_c = stack.pop()
                if stack:
                    stack[-1][0] += dw
                    stack[-1][1] += dc
                with stages.lock:
                    stages.wall[stage] = stages.wall.get(stage, 0.0) + dw - nested_w
                    stages.cpu[stage] = stages.cpu.get(stage, 0.0) + dc - nested_c
                    stages.calls[stage] = stages.calls.get(stage, 0) + 1

        timed.__wrapped__ = inner  # type: ignore[attr-defined]
        setattr(owner, attr, timed)


def _wrap_generator(stages: Stages, owner: Any, attr: str, stage: str) -> None:
    """Time spent inside ``next()`` of a generator method (the main thread waiting for decoded images)."""
    inner = getattr(owner, attr)

    def timed(*args: Any, **kwargs: Any):
        gen = inner(*args, **kwargs)
        holder = type("Next", (), {"step": staticmethod(lambda: next(gen))})
        stages.wrap(holder, "step", stage)
        while True:
            try:
                item = holder.step()
            except StopIteration:
                return
            yield item

    setattr(owner, attr, timed)


def child(folder: str, out: str, sort_args: list[str]) -> dict[str, Any]:
    import contextlib
    import io
    import resource

    t_imports = time.perf_counter()
    from dermsort import cli as top
    from dermsort.runtime import cli, journal, placement, preprocess, reading, sorter
    from dermsort.runtime.backends import base

    t_imported = time.perf_counter()
    stages = Stages()
    from dermsort.runtime import batches, recovery
    # (module or class, attribute, stage): a function is wrapped where it is looked up, so a name imported
    # into several modules is wrapped in each; a target that no longer exists stops the profile (a renamed
    # stage must not silently drop out of it)
    targets = [
        # main thread, start-up and end
        (cli, "open_backend", "session: backend load (open_backend)"),
        (cli, "load_bundle", "session: bundle load"),
        (sorter.Sorter, "open", "sorter open (lock, journal, fsync dirs, recovery)"),
        (cli, "write_report_checked", "report page"),
        (cli, "_drift", "drift check"),
        (cli, "_record_drift", "drift check"),
        (sorter, "write_results_csv", "results.csv"),
        (cli, "scan", "scan"),
        # decode threads
        (batches, "decode_one", "read + sha256"),
        (preprocess, "open_image", "decode (open_image)"),
        (reading, "preprocess", "preprocess (resize, checks, normalise)"),
        (reading, "encode_thumbnail", "thumbnail encode"),
        # main thread, per batch
        (sorter.Sorter, "_process", "main: decision, records, bookkeeping"),
        (base.Backend, "infer", "inference (Backend.infer)"),
        (batches.Scored, "result", "main waits for the model call"),
        (placement.Placer, "place_batch", "placement: copies, links, names"),
        (journal.Journal, "record", "journal appends (write + fsync)"),
        (placement, "fsync_dir", "placement: directory fsyncs"),
        (journal, "fsync_dir", "placement: directory fsyncs"),
        (sorter, "fsync_dir", "placement: directory fsyncs"),
        (recovery, "fsync_dir", "placement: directory fsyncs"),
        (placement, "copy_durable", "placement: copy + file fsync"),
        (placement, "write_durable", "placement: copy + file fsync"),
        (sorter, "write_thumbnail", "thumbnail write"),
    ]
    missing = [f"{getattr(o, '__name__', o)}.{a}" for o, a, _ in targets if not hasattr(o, a)]
    if missing:
        raise SystemExit(f"stage_profile: these stage functions no longer exist, update the profile: {', '.join(missing)}")
    for owner, attr, stage in targets:
        stages.wrap(owner, attr, stage)
    _wrap_generator(stages, sorter.Sorter, "_decode_stream", "main waits for decoded images")
    buf = io.StringIO()
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    with contextlib.redirect_stdout(buf):
        rc = top.main(["sort", folder, "--out", out, "--json", *sort_args])
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    summary = json.loads(buf.getvalue()[buf.getvalue().index("{"):])
    return {"rc": rc, "first_line_to_imports_s": t_imports - _T_FIRST_LINE, "imports_s": t_imported - t_imports,
            "main_wall_s": wall, "process_cpu_s": (ru.ru_utime + ru.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
            "peak_rss_mb": ru.ru_maxrss / 1024, "sorted": summary["sorted"],
            "backend": f"{summary['backend']['backend']}/{summary['backend']['artifact']}",
            "sort_loop_s": summary["seconds"],
            "stages": {k: {"wall_s": stages.wall[k], "cpu_s": stages.cpu[k], "calls": stages.calls[k]}
                       for k in stages.wall}}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import shutil

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], argv[2], argv[3:])))
        return 0
    sort_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, sort_args = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="python -m studies.stage_profile", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write stage-profile.json/.md here")
    args = parser.parse_args(argv)
    from dermsort.bench.machine import load_average, machine_info
    from dermsort.bench.measure import warm_page_cache

    warm_page_cache(sorted(p for p in args.folder.iterdir() if p.is_file()))
    scratch = Path(tempfile.mkdtemp(prefix="dermsort-stages-"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    runs = []
    try:
        # a first sort primes the machine profile and compiled-model caches, as after a first run
        subprocess.run([sys.executable, "-m", "studies.stage_profile", "--child", str(args.folder),
                        str(scratch / "prime"), *sort_args], env=env, check=True, capture_output=True)
        for r in range(args.reps):
            load = load_average()
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "studies.stage_profile", "--child", str(args.folder),
                                  str(scratch / f"out-{r}"), *sort_args], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                raise SystemExit(res.stderr[-2000:])
            run = json.loads(res.stdout.strip().splitlines()[-1])
            run["process_wall_s"], run["load_before"] = wall, load
            runs.append(run)
            print(f"rep {r + 1}: {wall:.2f} s, load {load}", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"schema": "dermsort-stage-profile/1", "command": "python -m studies.stage_profile "
              + " ".join([str(a) for a in (sys.argv[1:] if argv is None else argv)] + (["--", *sort_args] if sort_args else [])),
              "machine": machine_info(), "runs": runs, "load_after": load_average()}
    text = render(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "stage-profile.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "stage-profile.md").write_text(text)
    print(text)
    return 0


DECODE_STAGES = ("read + sha256", "decode (open_image)", "preprocess (resize, checks, normalise)", "thumbnail encode")
#: stages on the sorter's inference thread (it runs the model while the main thread places the batch before)
INFER_STAGES = ("inference (Backend.infer)",)
OFF_MAIN = DECODE_STAGES + INFER_STAGES


def render(report: dict[str, Any]) -> str:
    runs = report["runs"]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    n = runs[0]["sorted"] or 1
    m = report["machine"]
    lines = ["# Stage profile of one `dermsort sort` process (issue 26)", "",
             f"Command: `{report['command']}`  ", f"Machine: {m['cpu']}, {m['logical_cores']} logical cores; "
             f"backend {runs[0]['backend']}; {runs[0]['sorted']} images; medians of {len(runs)} fresh processes; "
             f"load average before each: {', '.join(str(r['load_before']) for r in runs)}, after: {report['load_after']}.",
             "", f"Process wall {med([r['process_wall_s'] for r in runs]):.3f} s (spawn to exit), "
             f"CPU in `main` {med([r['process_cpu_s'] for r in runs]):.3f} s, peak RSS "
             f"{med([r['peak_rss_mb'] for r in runs]):.0f} MB.", "",
             "| stage | thread | wall s | CPU s | ms/image (wall) | calls |", "|---|---|---:|---:|---:|---:|"]
    interp = med([r["process_wall_s"] - r["main_wall_s"] - r["imports_s"] for r in runs])
    lines.append(f"| interpreter start + exit (outside `main`) | main | {interp:.3f} | | | 1 |")
    lines.append(f"| imports (`dermsort.cli` and what it pulls in) | main | {med([r['imports_s'] for r in runs]):.3f} | | | 1 |")
    names = list(dict.fromkeys(k for r in runs for k in r["stages"]))
    for name in names:
        wall = med([r["stages"].get(name, {}).get("wall_s", 0.0) for r in runs])
        cpu = med([r["stages"].get(name, {}).get("cpu_s", 0.0) for r in runs])
        calls = med([r["stages"].get(name, {}).get("calls", 0) for r in runs])
        thread = "decode pool" if name in DECODE_STAGES else "inference" if name in INFER_STAGES else "main"
        lines.append(f"| {name} | {thread} | {wall:.3f} | {cpu:.3f} | {wall / n * 1000:.2f} | {calls:g} |")
    rest = med([r["main_wall_s"] - sum(v["wall_s"] for k, v in r["stages"].items() if k not in OFF_MAIN)
                for r in runs])
    lines.append(f"| the rest of `main` (click, summary, untimed) | main | {rest:.3f} | | | |")
    dw = sum(med([r["stages"].get(k, {}).get("wall_s", 0.0) for r in runs]) for k in DECODE_STAGES)
    dc = sum(med([r["stages"].get(k, {}).get("cpu_s", 0.0) for r in runs]) for k in DECODE_STAGES)
    lines += ["", f"Decode pool: {dw:.3f} s wall for {dc:.3f} s CPU over all its threads: "
              f"{max(0.0, dw - dc):.3f} s runnable but not running (contention with inference, which uses every core) "
              "or waiting for I/O. Main-thread stages are exclusive of nested ones and add up to `main`'s wall; the "
              "inference thread's model calls overlap the main thread's placement of the batch before (the main "
              "thread's share of them is \"main waits for the model call\")."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
