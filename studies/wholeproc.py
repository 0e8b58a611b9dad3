"""Issue 15's whole-process table: `dermsort sort` vs a DermoSort-style pipeline vs the same model naive
vs a decode-only floor, each a fresh process, timed from outside, alternating, in one run.

``python -m studies.wholeproc --out docs/bench/cpu-epyc-2core/whole-process``

Every measured command runs under a tiny launcher (``python -S``, ~10 MB) that times it and reads
``getrusage(RUSAGE_CHILDREN)``: wall time, user+system CPU time and peak RSS (``ru_maxrss``) of the
command alone. (Linux carries ``ru_maxrss`` over fork + exec, so a child forked straight from a big
parent would report the parent's RSS; the small launcher keeps that floor at ~10 MB.)

Sets: N real dermoscopy images from ../shared/data (copied into one folder), camera-like 12 MP and
24 MP JPEGs made from real images by upscaling (in a temporary folder, deleted afterwards), and one
image: "warm" (machine profile and compiled-model caches present, as on every run after the first)
and "cold" (a fresh, empty cache folder: first run on a new machine, probe included). Arms:

- **dermsort sort**: ``dermsort sort FOLDER --out NEW`` at default settings (copy mode, auto backend);
- **DermoSort-style**: bench/dermosort.py (EfficientNet-B4 @ 256 px, torch eager FP32, batch 1,
  autograd on, full decode), copying each file into benign/ or review/;
- **naive, same model**: bench/naive_script.py, issue 26's 20-line script (Pillow, resize + crop,
  Shades of Gray + ``(x - 127) / 128``, the bundle's FP32 ``model.onnx`` on ONNX Runtime with default
  options at batch 1, ``shutil.copy2``);
- **bare imports** (1 image only): ``python -c "import numpy, PIL.Image, click, <backend library>"``, the
  yardstick for a warm one-image sort;
- **decode-only floor**: read every file and decode it as the runtime does (JPEG ``draft``, EXIF,
  RGB), in a thread pool of one thread per core; no model, no hashing, no copies.

Each round runs every arm once, in an order rotated every round, so slow phases of the shared
machine fall on all arms; ratios are medians of per-round ratios (paired) and of medians.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: the checkout that holds studies/ (not an installed package)
REPO = Path(__file__).resolve().parents[1]

LAUNCHER = r"""
import json, resource, subprocess, sys, time
cmd, result = json.loads(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
wall = time.perf_counter() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
scale = 1 if sys.platform == "darwin" else 1024
with open(result, "w") as fh:
    json.dump({"rc": proc.returncode, "wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
               "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss * scale / 2**20,
               "stdout": proc.stdout.decode(errors="replace"),
               "stderr": proc.stderr.decode(errors="replace")[-2000:]}, fh)
"""

#: issue 26's targets (issue 15's were 3x naive, 1.2x the floor, cold < 2 s, warm < 1 s)
TARGETS = {"vs_dermosort_min": 20.0, "vs_naive_min": 2.0, "ort_fp32_vs_naive_min": 1.3, "large_vs_floor_max": 1.3,
           "one_warm_vs_imports_max": 2.0, "one_cold_s_max": 1.5, "peak_rss_mb_max": 300.0}
ORT_FP32 = "--backend onnxruntime --precision fp32"


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` under the launcher: wall, CPU and peak RSS of that command alone."""
    fd, result = tempfile.mkstemp(suffix=".json", prefix="dermsort-wholeproc-")
    os.close(fd)
    try:
        # the environment travels as the launcher's own (not on a command line that `ps` shows)
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, json.dumps(cmd), result], env=env, check=True)
        out = json.loads(Path(result).read_text())
    finally:
        os.unlink(result)
    if out["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {out['rc']}: {out['stderr'].strip().splitlines()[-1:]}")
    return out


def dermsort_exe() -> list[str]:
    exe = Path(sys.executable).with_name("dermsort")
    return [str(exe)] if exe.is_file() else [sys.executable, "-c", "from dermsort.cli import main; main()"]


def floor(folder: Path, model: Path | None) -> float:
    """Decode-only floor, in this (fresh) process: read + runtime ``open_image`` on a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    from dermsort.runtime.bundle import DEFAULT_BUNDLE, load_bundle
    from dermsort.runtime.preprocess import open_image

    spec = load_bundle(model or DEFAULT_BUNDLE)[0].metadata.preprocess
    paths = sorted(p for p in folder.iterdir() if p.is_file())

    def one(path: Path) -> tuple[int, int]:
        img, _ = open_image(path.read_bytes(), spec, path.name)
        return img.size

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        sizes = list(pool.map(one, paths))
    assert len(sizes) == len(paths)
    return time.perf_counter() - start


def arms(folder: Path, scratch: Path, model: Path | None, warm_cache: Path, one_image: bool,
         variants: list[str] = ()) -> dict[str, Any]:
    """name -> function(round) -> (cmd, env); each call gets a new output folder (and cold cache)."""
    py = sys.executable
    bundle = ["--model", str(model)] if model else []
    counter = iter(range(10**6))

    def out() -> str:
        return str(scratch / f"out-{next(counter)}")

    def env(cache: Path) -> dict[str, str]:
        return dict(os.environ, DERMSORT_CACHE_DIR=str(cache))

    def sort_warm():
        return [*dermsort_exe(), "sort", str(folder), "--out", out(), "--json", *bundle], env(warm_cache)

    def sort_cold():
        cache = scratch / f"cold-cache-{next(counter)}"
        return [*dermsort_exe(), "sort", str(folder), "--out", out(), "--json", *bundle], env(cache)

    result = {"dermsort sort": sort_warm}
    for extra in variants:  # e.g. "--batch-size 4": the same warm sort with other options
        result[f"dermsort sort {extra}"] = (lambda extra=extra: (sort_warm()[0] + extra.split(), env(warm_cache)))
    if one_image:
        result["dermsort sort, cold (new cache dir)"] = sort_cold
    result["DermoSort-style"] = lambda: ([py, "-m", "dermsort.bench.dermosort", str(folder), "--out", out()],
                                         env(warm_cache))
    result["naive, same model"] = lambda: ([py, "-m", "dermsort.bench.naive_script", str(folder), out(),
                                            *([str(model)] if model else [])], env(warm_cache))
    if one_image:
        result["bare imports"] = lambda: ([py, "-c", "import numpy, PIL.Image, click, openvino"], env(warm_cache))
    def floor():  # studies/ is not installed: the child finds it through the checkout's root
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        return [py, "-m", "studies.wholeproc", "--floor", str(folder), *bundle], dict(env(warm_cache), PYTHONPATH=path)

    result["decode-only floor"] = floor
    return result


def run_set(name: str, folder: Path, scratch: Path, model: Path | None, warm_cache: Path, reps: int,
            echo, variants: list[str] = (), skip: set[str] = frozenset()) -> dict[str, Any]:
    from dermsort.bench.machine import load_average
    from dermsort.bench.measure import median, warm_page_cache

    paths = sorted(p for p in folder.iterdir() if p.is_file())
    warm_page_cache(paths)
    table = arms(folder, scratch, model, warm_cache, one_image=len(paths) == 1, variants=variants)
    table = {arm: make for arm, make in table.items() if arm not in skip}
    names = list(table)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    load_before = load_average()
    round_loads = []
    for r in range(max(1, reps)):
        round_loads.append(load_average())
        order = names[r % len(names):] + names[: r % len(names)]
        for arm in order:
            cmd, env = table[arm]()
            res = measure(cmd, env)
            if arm.startswith("dermsort sort"):
                summary = json.JSONDecoder().raw_decode(res["stdout"][res["stdout"].index("{"):])[0]
                res["backend"] = f"{summary['backend']['backend']}/{summary['backend']['artifact']}"
                res["sorted"] = summary["sorted"]
            res.pop("stdout"), res.pop("stderr")
            runs[arm].append(res)
            echo(f"  {name} round {r + 1} {arm}: {res['wall_s']:.2f} s wall, {res['cpu_s']:.2f} s CPU, "
                 f"{res['peak_rss_mb']:.0f} MB" + (f" ({res['backend']})" if "backend" in res else ""))
        for p in scratch.glob("out-*"):
            shutil.rmtree(p, ignore_errors=True)
    rows = {}
    for arm, rs in runs.items():
        rows[arm] = {k: median([x[k] for x in rs]) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        rows[arm]["runs_wall_s"] = [round(x["wall_s"], 3) for x in rs]
        rows[arm]["max_peak_rss_mb"] = max(x["peak_rss_mb"] for x in rs)
        if "backend" in rs[0]:
            rows[arm]["backend"] = sorted({x["backend"] for x in rs})
    sort = runs["dermsort sort"]

    def paired(other: str, inverse: bool = False) -> float:
        if other not in runs:  # an arm left out with --skip-arms
            return float("nan")
        ratios = [(o["wall_s"] / s["wall_s"]) for s, o in zip(sort, runs[other])]
        return median([1 / x for x in ratios]) if inverse else median(ratios)

    ratios = {"dermosort_over_sort": paired("DermoSort-style"), "naive_over_sort": paired("naive, same model"),
              "sort_over_floor": paired("decode-only floor", inverse=True)}
    ort = f"dermsort sort {ORT_FP32}"
    if ort in runs and "naive, same model" in runs:
        ratios["naive_over_ort_fp32"] = median([o["wall_s"] / s["wall_s"] for s, o in zip(runs[ort], runs["naive, same model"])])
    if "bare imports" in runs and "dermsort sort" in runs:
        ratios["sort_over_bare_imports"] = median([s["wall_s"] / o["wall_s"] for s, o in zip(sort, runs["bare imports"])])
    return {"set": name, "n_images": len(paths), "mean_file_mb": sum(p.stat().st_size for p in paths) / len(paths) / 2**20,
            "rows": rows, "paired_ratios": ratios, "load_before": load_before, "load_after": load_average(),
            "round_loads": round_loads}


def ham10000_images(limit: int) -> list[Path]:
    """The first ``limit`` HAM10000 images of ../shared/data (test split first): issue 26's 299x224 JPEGs."""
    import csv

    from studies.pipeline import DATA

    with open(DATA / "ham10000" / "labels.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: (r.get("split") != "test", r["file"]))
    return [DATA / "ham10000" / r["file"] for r in rows[:limit]]


def prepare_sets(tmp: Path, n_real: int, n_large: int, large: list[tuple[int, int]], grain: float,
                 source: str = "mixed") -> dict[str, Path]:
    from studies.pipeline import make_large, real_images

    sets = {}
    real = tmp / "real"
    real.mkdir()
    for p in (ham10000_images(n_real) if source == "ham10000" else real_images(n_real)):
        shutil.copy(p, real / f"{p.parent.parent.name if p.parent.name == 'images' else p.parent.name}_{p.name}")
    sets[f"{n_real} {'HAM10000' if source == 'ham10000' else 'dataset'} images"] = real
    for w, h in large:
        sets[f"{w * h / 1e6:.0f} MP JPEGs"] = make_large(tmp / f"{w}x{h}", (w, h), n_large, 92, grain)[0].parent
    one = tmp / "one"
    one.mkdir()
    shutil.copy(sorted(real.iterdir())[0], one)
    sets["1 image"] = one
    return sets


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for s in report["sets"]:
        r, rows = s["paired_ratios"], s["rows"]
        if s["n_images"] > 1 and not s["set"].endswith("MP JPEGs"):
            out.append({"target": f">= {TARGETS['vs_dermosort_min']:g}x DermoSort-style (wall)", "set": s["set"],
                        "value": r["dermosort_over_sort"], "met": r["dermosort_over_sort"] >= TARGETS["vs_dermosort_min"]})
            out.append({"target": f">= {TARGETS['vs_naive_min']:g}x naive same model (wall)", "set": s["set"],
                        "value": r["naive_over_sort"], "met": r["naive_over_sort"] >= TARGETS["vs_naive_min"]})
            if "naive_over_ort_fp32" in r:
                v = r["naive_over_ort_fp32"]
                out.append({"target": f">= {TARGETS['ort_fp32_vs_naive_min']:g}x naive, sort {ORT_FP32} (wall)",
                            "set": s["set"], "value": v, "met": v >= TARGETS["ort_fp32_vs_naive_min"]})
        if s["set"].endswith("MP JPEGs"):
            out.append({"target": f"<= {TARGETS['large_vs_floor_max']:g}x decode-only floor (wall)", "set": s["set"],
                        "value": r["sort_over_floor"], "met": r["sort_over_floor"] <= TARGETS["large_vs_floor_max"]})
        if s["n_images"] == 1:
            v = rows["dermsort sort, cold (new cache dir)"]["wall_s"]
            out.append({"target": f"dermsort sort, cold (new cache dir): <= {TARGETS['one_cold_s_max']:g} s",
                        "set": s["set"], "value": v, "met": v <= TARGETS["one_cold_s_max"]})
            v = r.get("sort_over_bare_imports", float("nan"))
            out.append({"target": f"dermsort sort, warm: <= {TARGETS['one_warm_vs_imports_max']:g}x bare imports",
                        "set": s["set"], "value": v, "met": v <= TARGETS["one_warm_vs_imports_max"]})
        for arm in (a for a in rows if a.startswith("dermsort sort")):
            v = rows[arm]["max_peak_rss_mb"]
            out.append({"target": f"peak RSS < {TARGETS['peak_rss_mb_max']:g} MB ({arm}, max of runs)", "set": s["set"],
                        "value": v, "met": v < TARGETS["peak_rss_mb_max"]})
    return out


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = ["# Whole-process benchmark (issues 15, 26)", "",
             f"{report['started']} → {report['finished']}. Command: `{report['command']}`", "",
             f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['ram_gb']} GB RAM; Python {m['python']}; "
             + ", ".join(f"{a} {b}" for a, b in m["versions"].items()) + ".",
             f"Each figure: median of {report['reps']} fresh processes per arm, arms alternated (order rotated every "
             "round). Ratios: median of per-round paired ratios. Wall = spawn to exit; CPU = user + system of the "
             "process and its children; peak RSS = ru_maxrss. Shared machine: load average per set below.", "",
             "| set | images | MB/file | arm | wall s | CPU s | peak RSS MB | runs (wall s) | backend |",
             "|---|---:|---:|---|---:|---:|---:|---|---|"]
    for s in report["sets"]:
        for arm, r in s["rows"].items():
            lines.append(f"| {s['set']} | {s['n_images']} | {s['mean_file_mb']:.2f} | {arm} | {r['wall_s']:.2f} | "
                         f"{r['cpu_s']:.2f} | {r['peak_rss_mb']:.0f} (max {r['max_peak_rss_mb']:.0f}) | "
                         f"{', '.join(f'{x:.2f}' for x in r['runs_wall_s'])} | {', '.join(r.get('backend', []))} |")
    lines += ["", "| set | DermoSort-style / sort | naive same model / sort | naive / sort ORT FP32 | sort / decode-only floor "
              "| sort / bare imports | 1-min load at each round's start → after |", "|---|---:|---:|---:|---:|---:|---|"]
    for s in report["sets"]:
        r = s["paired_ratios"]
        opt = lambda k, f="{:.2f}×": f.format(r[k]) if k in r else ""  # noqa: E731
        lines.append(f"| {s['set']} | {r['dermosort_over_sort']:.1f}× | {r['naive_over_sort']:.2f}× | "
                     f"{opt('naive_over_ort_fp32')} | {r['sort_over_floor']:.2f}× | {opt('sort_over_bare_imports')} | "
                     f"{', '.join(str(x[0]) for x in s.get('round_loads', []) if x)} → {(s['load_after'] or ['?'])[0]} |")
    lines += ["", "## Targets", "", "| target | set | value | met |", "|---|---|---:|---|"]
    lines += [f"| {v['target']} | {v['set']} | {v['value']:.2f} | {'yes' if v['met'] else '**no**'} |"
              for v in report["verdicts"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m studies.wholeproc", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the bundled model)")
    parser.add_argument("--real", type=int, default=300, help="dataset images")
    parser.add_argument("--real-from", choices=("mixed", "ham10000"), default="mixed",
                        help="mixed: every labelled set interleaved (issue 15); ham10000: HAM10000's 299x224 JPEGs (issue 26)")
    parser.add_argument("--n-large", type=int, default=12, help="JPEGs per large size")
    parser.add_argument("--large", default="4000x3000,6000x4000")
    parser.add_argument("--grain", type=float, default=4.0,
                        help="sensor-like grain (sigma, 8-bit levels) on the large JPEGs: plain upscales are smoother, "
                             "smaller and faster to decode than camera files (sigma 4: ~5.7 MB per 24 MP file)")
    parser.add_argument("--variant", action="append", default=[],
                        help="extra `dermsort sort` arm with these options, e.g. \"--batch-size 4\" (repeatable)")
    parser.add_argument("--reps", type=int, default=3, help="rounds (fresh processes per arm and set)")
    parser.add_argument("--sets", default="", help="comma-separated subset of set names (default: all)")
    parser.add_argument("--skip-arms", default="",
                        help="comma-separated arms to leave out while iterating, e.g. \"DermoSort-style\" (a committed "
                             "report keeps every arm)")
    parser.add_argument("--out", type=Path, default=None, help="write whole-process.json/.md here")
    parser.add_argument("--floor", type=Path, default=None, help=argparse.SUPPRESS)  # internal: the floor arm
    args = parser.parse_args(argv)
    if args.floor is not None:
        print(f"{floor(args.floor, args.model):.3f}")
        return 0
    from dermsort.bench.machine import machine_info

    echo = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    large = [tuple(int(v) for v in s.lower().split("x")) for s in args.large.split(",") if s.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="dermsort-wholeproc-"))
    try:
        echo("preparing image sets ...")
        sets = prepare_sets(tmp, args.real, args.n_large, large, args.grain, args.real_from)
        if args.sets:
            wanted = {s.strip() for s in args.sets.split(",")}
            sets = {k: v for k, v in sets.items() if k in wanted}
        warm = tmp / "warm-cache"
        echo("priming the warm cache (profile, compiled models) ...")
        for i, extra in enumerate(["", *args.variant]):  # every arm's compiled model is cached, as after a first run
            # the largest set: a first run that big probes the backends and writes the machine profile
            # (a handful of images does not probe, runtime/cli.py PROBE_MIN_IMAGES)
            measure([*dermsort_exe(), "sort", str(max(sets.values(), key=lambda f: len(list(f.iterdir())))), "--out",
                     str(tmp / f"prime-out-{i}"), *(["--model", str(args.model)] if args.model else []), *extra.split()],
                    dict(os.environ, DERMSORT_CACHE_DIR=str(warm)))
        command = "python -m studies.wholeproc " + shlex.join(sys.argv[1:] if argv is None else argv)
        report: dict[str, Any] = {"schema": "dermsort-wholeproc-bench/1", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "command": command, "machine": machine_info(), "reps": args.reps,
                                  "targets": TARGETS, "grain": args.grain,
                                  "variants": args.variant, "sets": []}
        for name, folder in sets.items():
            echo(f"measuring {name} ...")
            report["sets"].append(run_set(name, folder, tmp, args.model, warm, args.reps, echo, args.variant,
                                          skip={a.strip() for a in args.skip_arms.split(",") if a.strip()}))
        report["verdicts"] = verdicts(report)
        report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = render(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "whole-process.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "whole-process.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
