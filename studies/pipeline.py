"""Issue 2's speed targets, measured: dermsort's pipeline vs a naive one vs JPEG decode alone.

``python -m studies.pipeline --model BUNDLE --out REPORT_DIR``

Image sets: real dermoscopy images from ../shared/data (their native 300-1872 px sizes) and large
JPEGs generated in a temporary folder by upscaling real dermoscopy images to 12 MP (4000x3000) and
24 MP (6000x4000), JPEG quality 92 (never kept unless --keep-large). For each set and artifact:

1. **pipeline**: the real runtime Sorter in dry-run mode: read + sha256 + JPEG ``draft`` decode in its
   thread pool, batched inference, decisions;
2. **naive**: the same model, one image at a time: full decode (no draft), resize, normalise, batch 1;
3. **decode alone**: the same Sorter with a model that costs nothing (a null backend), i.e. the
   pipeline's own read + hash + draft decode + resize in the same thread pool; plus one-core
   ``draft`` decode per image.

Then in fresh processes (worker.py): cold start to first decision and peak RSS with onnxruntime.
Targets (issue 2): >= 5x naive on large JPEGs; within 1.3x of decode alone; cold start < 1.5 s;
peak RSS < 400 MB with onnxruntime.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image

from dermsort.runtime.backends.base import Backend, BackendSpec, create_backend
from dermsort.runtime.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from dermsort.runtime.preprocess import open_image

from dermsort.bench.machine import command_line, load_average, machine_info, machine_name
from dermsort.bench.measure import median, run_worker, warm_page_cache
from dermsort.bench.naive import backend_runner, run_naive
from dermsort.bench.worker import candidates, sort_pass

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGETS = {"speedup_vs_naive_large_min": 5.0, "ratio_to_decode_alone_max": 1.3, "cold_start_s_max": 1.5,
           "peak_rss_mb_max": 400.0}
LARGE_SIZES = ((4000, 3000), (6000, 4000))


class NullBackend(Backend):
    """A model that costs nothing: the sorter's decode path timed on its own (everything benign)."""

    spec = BackendSpec("null", ("onnx", "openvino-ir", "torch", "tensorrt-engine"), "", "no model (bench only)")

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return True, "built into dermsort.bench"

    def _load_impl(self) -> None:
        self._n_classes = len(self.metadata.classes)

    def _predict_impl(self, batch: np.ndarray) -> np.ndarray:
        out = np.zeros((len(batch), self._n_classes), dtype=np.float32)
        out[:, [i for i in range(self._n_classes) if i not in self.metadata.malignant_indices()][0]] = 1.0
        return out


def real_images(limit: int) -> list[Path]:
    """Real dermoscopy JPEGs of every size in ../shared/data, test splits first, interleaved by set."""
    per_set: list[list[Path]] = []
    for name in ("ham10000-sample", "ph2", "kaggle-melanoma-sample", "isic2020"):
        labels = DATA / name / "labels.csv"
        if not labels.is_file():
            continue
        with open(labels, newline="") as fh:
            rows = sorted(csv.DictReader(fh), key=lambda r: (r.get("split") != "test", r["file"]))
        per_set.append([DATA / name / r["file"] for r in rows])
    per_set.append(sorted((DATA / "isic2020-unlabelled").glob("*.jpg")))
    picked: list[Path] = []
    while len(picked) < limit and any(per_set):
        for paths in per_set:
            if paths and len(picked) < limit:
                picked.append(paths.pop(0))
    return picked


def large_sources() -> list[Path]:
    """The highest-resolution real dermoscopy images we have (1872x1053 ISIC, then 767x576 PH2)."""
    big = sorted((DATA / "isic2020-unlabelled").glob("*.jpg"), key=lambda p: -Image.open(p).size[0])
    ph2 = sorted((DATA / "ph2" / "images").glob("*.jpg"))
    return [p for p in big if Image.open(p).size[0] >= 1000] + ph2


def make_large(folder: Path, size: tuple[int, int], count: int, quality: int = 92, grain: float = 0.0) -> list[Path]:
    """Upscale real dermoscopy images to ``size`` (centre-cropped to its aspect ratio) as JPEG ``quality``."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(0)
    out = []
    for i, src in enumerate(large_sources()[:count]):
        img = Image.open(src).convert("RGB")
        w, h = img.size
        target = width / height
        if w / h > target:
            nw = round(h * target)
            img = img.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
        else:
            nh = round(w / target)
            img = img.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
        img = img.resize(size, Image.Resampling.BICUBIC)
        if grain > 0:  # optional sensor-like noise: upscaled images are smoother than camera files
            arr = np.asarray(img, dtype=np.float32) + rng.normal(0, grain, (height, width, 1)).astype(np.float32)
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        path = folder / f"large_{width}x{height}_{i:02d}_{src.stem}.jpg"
        img.save(path, "JPEG", quality=quality)
        out.append(path)
    return out


def draft_decode_ms(paths: list[Path], bundle: Bundle) -> float:
    """Median one-core time of the runtime's own open_image (draft decode + EXIF + RGB), no resize/model."""
    spec = bundle.metadata.preprocess
    times = []
    for path in paths:
        data = path.read_bytes()
        start = time.perf_counter()
        open_image(data, spec, path.name)
        times.append(time.perf_counter() - start)
    return median(times) * 1e3


def full_decode_ms(paths: list[Path]) -> float:
    times = []
    for path in paths:
        data = path.read_bytes()
        start = time.perf_counter()
        Image.open(io.BytesIO(data)).convert("RGB")
        times.append(time.perf_counter() - start)
    return median(times) * 1e3


@dataclass
class Knobs:
    batch_size: int = 16
    workers: int | None = None
    threads: int | None = None
    reps: int = 3
    naive_reps: int = 2


def _timed_passes(fn, reps: int) -> list[float]:
    fn()  # warm-up pass: thread pools, graph, caches
    return [fn() for _ in range(max(1, reps))]


def measure_set(name: str, paths: list[Path], bundle: Bundle, artifacts: list[str], backend_name: str,
                knobs: Knobs, echo) -> dict[str, Any]:
    root, cands = candidates([str(p) for p in paths])
    n = len(paths)
    sizes = sorted({Image.open(p).size for p in paths})
    result: dict[str, Any] = {"set": name, "n_images": n, "sizes": [f"{w}x{h}" for w, h in sizes],
                              "mean_file_mb": float(np.mean([p.stat().st_size for p in paths])) / 2**20,
                              "draft_decode_ms_one_core": draft_decode_ms(paths, bundle),
                              "full_decode_ms_one_core": full_decode_ms(paths), "artifacts": {}}
    null = NullBackend(bundle, bundle.get(artifacts[0])).load()
    decode_s = _timed_passes(lambda: sort_pass(root, cands, null, knobs.batch_size, knobs.workers).seconds, knobs.reps)
    result["decode_alone_s"] = decode_s
    result["decode_alone_images_per_s"] = n / median(decode_s)
    echo(f"  {name}: decode alone {result['decode_alone_images_per_s']:.1f} img/s")
    try:  # issue 15: the DermoSort-style pipeline (EfficientNet-B4 @ 256, torch eager, batch 1) on the same images
        from dermsort.bench.dermosort import run_in_process

        result["dermosort_s"] = run_in_process(paths, knobs.naive_reps)
        result["dermosort_images_per_s"] = n / median(result["dermosort_s"])
        echo(f"  {name}: DermoSort-style {result['dermosort_images_per_s']:.2f} img/s")
    except ImportError as exc:
        echo(f"  {name}: DermoSort-style not measured: {exc}")
    for art_name in artifacts:
        art = bundle.get(art_name)
        bundle.verify(art)
        backend = create_backend(backend_name, bundle, art, threads=knobs.threads).load()
        try:
            pipe_s = _timed_passes(lambda: sort_pass(root, cands, backend, knobs.batch_size, knobs.workers).seconds,
                                   knobs.reps)
            runner = backend_runner(backend, "naive")
            naive_s = _timed_passes(lambda: run_naive(runner, paths)[0], knobs.naive_reps)
        finally:
            backend.close()
        row = {"pipeline_s": pipe_s, "naive_s": naive_s,
               "pipeline_images_per_s": n / median(pipe_s), "naive_images_per_s": n / median(naive_s)}
        row["speedup_vs_naive"] = row["pipeline_images_per_s"] / row["naive_images_per_s"]
        row["ratio_to_decode_alone"] = median(pipe_s) / median(decode_s)
        if result.get("dermosort_images_per_s"):
            row["speedup_vs_dermosort"] = row["pipeline_images_per_s"] / result["dermosort_images_per_s"]
        result["artifacts"][art_name] = row
        echo(f"  {name} {backend_name}/{art_name}: pipeline {row['pipeline_images_per_s']:.1f} img/s, naive "
             f"{row['naive_images_per_s']:.1f} img/s ({row['speedup_vs_naive']:.2f}x), "
             f"{row['ratio_to_decode_alone']:.2f}x decode alone")
    return result


def fresh_process(bundle: Bundle, backend: str, artifact: str, sets: dict[str, list[Path]], cold_image: Path,
                  cold_reps: int, knobs: Knobs) -> dict[str, Any]:
    """Cold start (fresh processes, first decision on a real image) and peak RSS while sorting each set."""
    base = {"bundle": str(bundle.root), "backend": backend, "artifact": artifact, "batch_size": knobs.batch_size,
            "workers": knobs.workers, "threads": knobs.threads, "warmup": 0, "reps": 1}
    colds = [run_worker(base | {"files": [str(cold_image)], "mode": "cold"}) for _ in range(max(1, cold_reps))]
    out: dict[str, Any] = {"cold_start_s": median([c["cold_start_s"] for c in colds]),
                           "cold_start_runs_s": [c["cold_start_s"] for c in colds],
                           "cold_start_breakdown_s": {k: median([c["marks"][k] for c in colds]) for k in colds[0]["marks"]},
                           "rss_after_first_decision_mb": median([c["rss_after_first_decision_mb"] for c in colds]),
                           "peak_rss_mb": {}, "e2e_images_per_s_fresh_process": {}}
    for name, paths in sets.items():
        run = run_worker(base | {"files": [str(p) for p in paths], "mode": "run"})
        out["peak_rss_mb"][name] = run["peak_rss_mb"]
        out["e2e_images_per_s_fresh_process"][name] = len(paths) / median(run["e2e_seconds"])
    return out


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    large = [s for s in report["sets"] if s["set"].startswith("large")]
    for s in large:
        for art, r in s["artifacts"].items():
            rows.append({"target": f"pipeline >= {TARGETS['speedup_vs_naive_large_min']:g}x naive", "set": s["set"],
                         "artifact": art, "value": round(r["speedup_vs_naive"], 2),
                         "met": r["speedup_vs_naive"] >= TARGETS["speedup_vs_naive_large_min"]})
    for s in report["sets"]:
        for art, r in s["artifacts"].items():
            rows.append({"target": f"pipeline within {TARGETS['ratio_to_decode_alone_max']:g}x decode alone",
                         "set": s["set"], "artifact": art, "value": round(r["ratio_to_decode_alone"], 2),
                         "met": r["ratio_to_decode_alone"] <= TARGETS["ratio_to_decode_alone_max"]})
    for art, f in report["fresh_process"].items():
        rows.append({"target": f"cold start < {TARGETS['cold_start_s_max']:g} s", "set": "real (1 image)",
                     "artifact": art, "value": round(f["cold_start_s"], 3),
                     "met": f["cold_start_s"] < TARGETS["cold_start_s_max"]})
        for name, rss in f["peak_rss_mb"].items():
            rows.append({"target": f"peak RSS < {TARGETS['peak_rss_mb_max']:g} MB", "set": name, "artifact": art,
                         "value": round(rss, 1), "met": rss < TARGETS["peak_rss_mb_max"]})
    return rows


def render_markdown(report: dict[str, Any]) -> str:
    m, k = report["machine"], report["knobs"]
    lines = [f"# dermsort pipeline benchmark: {report['model_id']} on {report['backend']}", "",
             f"{report['started']} → {report['finished']}. Command: `{report['command']}`", "",
             f"Machine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), {m['ram_gb']} GB RAM, "
             f"GPU: {', '.join(m['gpus'])}; {m['os']}; Python {m['python']}; "
             + ", ".join(f"{a} {b}" for a, b in m["versions"].items()) + ".",
             f"Load average before {report['load_average_before']}, after {report['load_average_after']} "
             "(shared machine: other jobs compete for the same cores; differences under ~10–15% are noise).", "",
             f"Settings: Sorter batch {k['batch_size']}, decode workers {k['workers'] or 'runtime default'}, inference "
             f"threads {k['threads'] or 'runtime default'}; each figure is the median of {k['reps']} timed passes "
             f"(naive: {k['naive_reps']}) after one untimed warm-up pass; page cache warm. Large JPEGs: real dermoscopy "
             f"images upscaled (bicubic) and saved at quality {report['large_quality']}"
             + (f" with grain σ={report['grain']}" if report.get("grain") else "")
             + " — smoother than camera files, so their decode is, if anything, faster than real 12–24 MP photos.", "",
             "## Throughput (images/s)", "",
             "| set | images | mean file MB | artifact | pipeline | naive | speed-up | DermoSort-style | speed-up | "
             "decode alone (pool) | pipeline / decode-alone time | draft decode 1 core ms | full decode 1 core ms |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in report["sets"]:
        for art, r in s["artifacts"].items():
            lines.append(f"| {s['set']} ({', '.join(s['sizes'][:3])}{'…' if len(s['sizes']) > 3 else ''}) | "
                         f"{s['n_images']} | {s['mean_file_mb']:.2f} | {art} | {r['pipeline_images_per_s']:.1f} | "
                         f"{r['naive_images_per_s']:.1f} | {r['speedup_vs_naive']:.2f}× | "
                         f"{s.get('dermosort_images_per_s', float('nan')):.2f} | {r.get('speedup_vs_dermosort', float('nan')):.1f}× | "
                         f"{s['decode_alone_images_per_s']:.1f} | {r['ratio_to_decode_alone']:.2f}× | "
                         f"{s['draft_decode_ms_one_core']:.1f} | {s['full_decode_ms_one_core']:.1f} |")
    lines += ["", "## Fresh processes (onnxruntime)", "",
              "| artifact | cold start to first decision s (median; runs) | of which in-process: imports / bundle / "
              "verify+load / first decision s | RSS after first decision MB | peak RSS MB per set |",
              "|---|---|---|---:|---|"]
    for art, f in report["fresh_process"].items():
        b = f["cold_start_breakdown_s"]
        lines.append(f"| {art} | {f['cold_start_s']:.2f} ({', '.join(f'{x:.2f}' for x in f['cold_start_runs_s'])}) | "
                     f"{b['imports_s']:.2f} / {b['bundle_s']:.2f} / {b['verify_and_load_s']:.2f} / "
                     f"{b['first_decision_s']:.2f} | {f['rss_after_first_decision_mb']:.0f} | "
                     + ", ".join(f"{n}: {v:.0f}" for n, v in f["peak_rss_mb"].items()) + " |")
    lines += ["", "In-process marks are cumulative from the worker module's first line (interpreter start-up excluded); "
              "the cold start itself is the parent's wall clock from spawn to the first decision.", "",
              "## Targets (issue 2)", "", "| target | set | artifact | measured | met |", "|---|---|---|---:|---|"]
    lines += [f"| {v['target']} | {v['set']} | {v['artifact']} | {v['value']} | {'yes' if v['met'] else '**no**'} |"
              for v in report["verdicts"]]
    if report.get("ab_spinning"):
        lines += ["", "## A/B: onnxruntime intra-op spin-waiting on vs off (off is the shipped default since issue 15), runtime defaults otherwise", "",
                  "| set | artifact | rounds | on img/s (median) | off img/s (median) | paired off/on (median) | off faster in |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {a['set']} | {a['artifact']} | {a['rounds']} | {a['on_images_per_s']:.1f} | "
                  f"{a['off_images_per_s']:.1f} | {a['paired_ratio_off_over_on']:.3f} | "
                  f"{a['off_faster_in_rounds']}/{a['rounds']} |" for a in report["ab_spinning"]]
    if report.get("explore"):
        lines += ["", f"## Settings explored ({report['artifacts'][0]}; real set and largest set)", "",
                  "The ORT rows use a bench-only subclass of the runtime's onnxruntime backend that sets "
                  "`session.intra_op.allow_spinning` explicitly; everything else is the runtime as shipped.", "",
                  "| set | batch | decode workers | inference threads | ORT spinning | pipeline img/s | time / decode alone |",
                  "|---|---:|---:|---:|---|---:|---:|"]
        lines += [f"| {e['set']} | {e['batch']} | {e['workers']} | {e['threads']} | {e['spinning']} | "
                  f"{e['images_per_s']:.1f} | {e['ratio_to_decode_alone']:.2f}× |" for e in report["explore"]]
    return "\n".join(lines) + "\n"


class _NoSpinOrt:
    """onnxruntime with intra-op spin-waiting set explicitly (the A/B arms; the runtime ships it off)."""

    @staticmethod
    def make(bundle: Bundle, art_name: str, threads: int | None, spin: bool = False) -> Backend:
        from dermsort.runtime.backends.ort import OnnxRuntimeBackend

        class Spin(OnnxRuntimeBackend):
            def _options(self, ort: Any, level: Any) -> Any:
                opts = ort.SessionOptions()
                opts.graph_optimization_level = level
                opts.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
                opts.log_severity_level = 3
                opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
                return opts

        return Spin(bundle, bundle.get(art_name), threads=threads).load()


def explore(set_name: str, paths: list[Path], bundle: Bundle, art_name: str, knobs: Knobs, decode_alone_s: float,
            echo) -> list[dict]:
    """Pipeline throughput under other decode-worker / inference-thread / ORT spinning / batch settings."""
    root, cands = candidates([str(p) for p in paths])
    cores = os.cpu_count() or 1
    out = []
    for batch in sorted({4, knobs.batch_size}):
        for workers in sorted({1, cores}):
            for threads in sorted({1, cores}):
                for spinning in (True, False):
                    backend = _NoSpinOrt.make(bundle, art_name, threads, spin=spinning)
                    try:
                        secs = _timed_passes(lambda: sort_pass(root, cands, backend, batch, workers).seconds, knobs.reps)
                    finally:
                        backend.close()
                    row = {"set": set_name, "batch": batch, "workers": workers, "threads": threads,
                           "spinning": "on" if spinning else "off (default)", "images_per_s": len(paths) / median(secs),
                           "ratio_to_decode_alone": median(secs) / decode_alone_s}
                    echo(f"  explore {set_name} batch={batch} workers={workers} threads={threads} "
                         f"spinning={row['spinning']}: {row['images_per_s']:.1f} img/s "
                         f"({row['ratio_to_decode_alone']:.2f}x decode alone)")
                    out.append(row)
    return out


def ab_spinning(set_name: str, paths: list[Path], bundle: Bundle, art_name: str, knobs: Knobs, rounds: int,
                echo) -> dict[str, Any]:
    """Interleaved A/B at the runtime's default settings: ORT spin-waiting on vs off (shipped: off).

    Alternating the order every round spreads slow phases of a shared machine over both arms; the
    paired per-round ratio is the figure to trust, not either absolute.
    """
    root, cands = candidates([str(p) for p in paths])
    arms: dict[str, list[float]] = {"on": [], "off": []}
    ratios = []
    for i in range(max(1, rounds)):
        speeds = {}
        for arm in (("on", "off") if i % 2 == 0 else ("off", "on")):
            backend = _NoSpinOrt.make(bundle, art_name, knobs.threads, spin=arm == "on")
            try:
                secs = _timed_passes(lambda: sort_pass(root, cands, backend, knobs.batch_size, knobs.workers).seconds, 2)
            finally:
                backend.close()
            speeds[arm] = len(paths) / median(secs)
            arms[arm].append(speeds[arm])
        ratios.append(speeds["off"] / speeds["on"])
    result = {"set": set_name, "artifact": art_name, "rounds": rounds, "on_images_per_s": median(arms["on"]),
              "off_images_per_s": median(arms["off"]), "paired_ratio_off_over_on": median(ratios),
              "ratios": ratios, "off_faster_in_rounds": sum(r > 1 for r in ratios)}
    echo(f"  A/B {set_name} {art_name}: spinning on {result['on_images_per_s']:.1f} img/s, off "
         f"{result['off_images_per_s']:.1f} img/s, paired ratio {result['paired_ratio_off_over_on']:.3f} "
         f"(off faster in {result['off_faster_in_rounds']}/{rounds} rounds)")
    return result


@click.command()
@click.option("--model", "model", type=click.Path(path_type=Path), default=None,
              help="Model bundle (default: the bundled default model).")
@click.option("--artifacts", default="onnx-fp32,onnx-int8", show_default=True,
              help="Artifacts to measure (those missing from the bundle are skipped).")
@click.option("--backend", "backend_name", default="onnxruntime", show_default=True)
@click.option("--real", "n_real", type=click.IntRange(1, 10_000), default=128, show_default=True,
              help="Real dermoscopy images from ../shared/data.")
@click.option("--n-large", type=click.IntRange(1, 200), default=16, show_default=True,
              help="Generated JPEGs per large size.")
@click.option("--large", "large", default="4000x3000,6000x4000", show_default=True, help="Sizes of the large JPEGs.")
@click.option("--quality", type=click.IntRange(1, 100), default=92, show_default=True)
@click.option("--grain", type=float, default=0.0, show_default=True, help="Gaussian grain (sigma, 8-bit levels) on large JPEGs.")
@click.option("--reps", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--naive-reps", type=click.IntRange(1, 100), default=2, show_default=True)
@click.option("--cold-reps", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=None)
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@click.option("--explore/--no-explore", "explore_threads", default=False, help="Also try other decode-worker / inference-thread settings.")
@click.option("--ab-spinning", "ab_spinning_rounds", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Rounds of an interleaved A/B of ORT spin-waiting on/off (real and largest set, every artifact).")
@click.option("--keep-large", type=click.Path(path_type=Path), default=None,
              help="Keep the generated large JPEGs here (never commit them).")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="Write pipeline.md/json/csv here.")
def main(model: Path | None, artifacts: str, backend_name: str, n_real: int, n_large: int, large: str, quality: int,
         grain: float, reps: int, naive_reps: int, cold_reps: int, batch_size: int, workers: int | None,
         threads: int | None, explore_threads: bool, ab_spinning_rounds: int, keep_large: Path | None,
         out: Path | None) -> None:
    """Measure the pipeline vs naive vs decode-alone on real and large JPEGs; check issue 2's targets."""
    echo = lambda s: click.echo(s, err=True)  # noqa: E731
    bundle, _ = load_bundle(model if model is not None else DEFAULT_BUNDLE)
    arts = [a for a in artifacts.split(",") if a and any(x.name == a for x in bundle.artifacts)]
    if not arts:
        raise click.ClickException(f"none of {artifacts} in {bundle.root}")
    knobs = Knobs(batch_size=batch_size, workers=workers, threads=threads, reps=reps, naive_reps=naive_reps)
    started, load_before = time.strftime("%Y-%m-%dT%H:%M:%S%z"), load_average()
    tmp = Path(tempfile.mkdtemp(prefix="dermsort-large-"))
    try:
        sets: dict[str, list[Path]] = {"real": real_images(n_real)}
        for spec in large.split(","):
            if not spec.strip():
                continue
            w, h = (int(x) for x in spec.lower().split("x"))
            echo(f"generating {n_large} JPEGs of {w}x{h} ...")
            sets[f"large {w * h / 1e6:.0f} MP"] = make_large((keep_large or tmp) / f"{w}x{h}", (w, h), n_large, quality, grain)
        for paths in sets.values():
            warm_page_cache(paths)
        results = []
        for name, paths in sets.items():
            echo(f"measuring {name} ({len(paths)} images) ...")
            results.append(measure_set(name, paths, bundle, arts, backend_name, knobs, echo))
        echo("fresh processes: cold start and peak RSS ...")
        fresh = {a: fresh_process(bundle, backend_name, a, sets, sets["real"][0], cold_reps, knobs) for a in arts}
        report: dict[str, Any] = {
            "schema": "dermsort-pipeline-bench/1", "started": started, "finished": "", "command": command_line(),
            "machine": machine_info(), "load_average_before": load_before, "model_id": bundle.model_id,
            "bundle": str(bundle.root), "backend": backend_name, "artifacts": arts, "knobs": knobs.__dict__,
            "large_quality": quality, "grain": grain, "targets": TARGETS, "sets": results, "fresh_process": fresh}
        if explore_threads and backend_name == "onnxruntime":
            echo("exploring thread settings ...")
            report["explore"] = []
            for res in (results[0], results[-1]) if len(results) > 1 else results:
                report["explore"] += explore(res["set"], sets[res["set"]], bundle, arts[0], knobs,
                                             median(res["decode_alone_s"]), echo)
        if ab_spinning_rounds and backend_name == "onnxruntime":
            echo("A/B: ORT spin-waiting on vs off ...")
            report["ab_spinning"] = [ab_spinning(res["set"], sets[res["set"]], bundle, art, knobs, ab_spinning_rounds, echo)
                                     for res in ((results[0], results[-1]) if len(results) > 1 else results)
                                     for art in arts]
        report["verdicts"] = verdicts(report)
        report["finished"], report["load_average_after"] = time.strftime("%Y-%m-%dT%H:%M:%S%z"), load_average()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = render_markdown(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pipeline.md").write_text(text)
        (out / "pipeline.json").write_text(json.dumps(report, indent=2) + "\n")
        with open(out / "pipeline.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["set", "n_images", "mean_file_mb", "artifact", "pipeline_images_per_s", "naive_images_per_s",
                             "speedup_vs_naive", "decode_alone_images_per_s", "ratio_to_decode_alone",
                             "draft_decode_ms_one_core", "full_decode_ms_one_core"])
            for s in report["sets"]:
                for art, r in s["artifacts"].items():
                    writer.writerow([s["set"], s["n_images"], round(s["mean_file_mb"], 3), art,
                                     round(r["pipeline_images_per_s"], 2), round(r["naive_images_per_s"], 2),
                                     round(r["speedup_vs_naive"], 3), round(s["decode_alone_images_per_s"], 2),
                                     round(r["ratio_to_decode_alone"], 3), round(s["draft_decode_ms_one_core"], 2),
                                     round(s["full_decode_ms_one_core"], 2)])
        echo(f"report: {out / 'pipeline.md'} (machine folder name: {machine_name(report['machine'])})")
    click.echo(text)


if __name__ == "__main__":  # pragma: no cover
    main()
