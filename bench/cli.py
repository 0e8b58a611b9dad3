"""``dermsort bench``: speed, memory and decision parity of every backend x artifact of a bundle."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dermsort.runtime.errors import DermsortError


def _backends(value: str) -> list[str] | None:
    items = [v.strip() for v in value.split(",") if v.strip()]
    return None if not items or items == ["all"] else items


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", "data", multiple=True, required=True,
              help="labels.csv (file, malignant, split) or a folder containing one; repeat for several sets.")
@click.option("--split", default="test", show_default=True, help="Rows of this split (\"all\" for every row).")
@click.option("--backends", default="all", show_default=True, help="all, or a list: onnxruntime,openvino,...")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Report folder (report.md/json/csv, latency_vs_sensitivity.png). Default: ./bench-MODEL_ID")
@click.option("--reps", type=click.IntRange(1, 100_000), default=30, show_default=True,
              help="Timed model-only batch-1 calls (throughput per batch size uses about 2x this many images).")
@click.option("--warmup", type=click.IntRange(0, 1000), default=3, show_default=True, help="Untimed warm-up calls.")
@click.option("--e2e-reps", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Timed end-to-end passes over all images (median).")
@click.option("--cold-reps", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Fresh processes for cold start to first decision (median).")
@click.option("--max-images", type=click.IntRange(2, None), default=None,
              help="Use at most N images (class balance kept, seeded).")
@click.option("--batch-size", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Sorter batch size for the end-to-end runs (the `dermsort sort` default).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Decode threads (runtime default if unset).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Inference threads (runtime default if unset).")
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True), default=None,
              help="Training checkpoint: the naive baseline then runs the model in PyTorch eager FP32.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.97, show_default=True,
              help="An artifact the export's gate accepted leaves the machine profile only when its decision "
                   "agreement with the FP32 ONNX reference is significantly below this (Wilson 95 % upper bound).")
@click.option("--dermosort/--no-dermosort", "dermosort", default=True, show_default=True,
              help="Also time a DermoSort-style pipeline (EfficientNet-B4 @ 256, torch eager; needs torch).")
@click.option("--no-profile", is_flag=True, help="Do not write the machine profile that `--backend auto` reads.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json's content on stdout.")
def bench(bundle: Path, data: tuple[str, ...], split: str, backends: str, out: Path | None, reps: int, warmup: int,
          e2e_reps: int, cold_reps: int, max_images: int | None, batch_size: int, workers: int | None,
          threads: int | None, checkpoint: Path | None, min_agreement: float, dermosort: bool, no_profile: bool, as_json: bool) -> None:
    """Benchmark every available backend x artifact of BUNDLE on labelled images; write reports and the
    machine profile used by `--backend auto`."""
    from dermsort.runtime.bundle import load_bundle

    from .core import BenchSettings, run_bench
    from .data import load_labelled
    from .report import missing_modules, public_rows, write_reports

    required, plot_only = missing_modules()  # before two minutes of measuring, not after
    if required:
        raise DermsortError(f"`dermsort bench` needs {', '.join(required)}, which is not installed: "
                            'pip install "dermsort[bench]"')
    if plot_only:
        click.echo(f"warning: {', '.join(plot_only)} is not installed (pip install \"dermsort[bench]\"): the "
                   "reports are written, the plot will be missing", err=True)
    model, _ = load_bundle(bundle)
    images = load_labelled(list(data), None if split == "all" else split, max_images)
    settings = BenchSettings(reps=reps, warmup=warmup, e2e_reps=e2e_reps, cold_reps=cold_reps, batch_size=batch_size,
                             workers=workers, threads=threads, min_agreement=min_agreement, dermosort=dermosort)
    out = out if out is not None else Path(f"bench-{model.model_id}")
    echo = (lambda s: click.echo(s, err=True))
    echo(f"{len(images)} images ({sum(i.malignant for i in images)} malignant); reports -> {out}")
    report = run_bench(model.root, images, settings, backends=_backends(backends), checkpoint=checkpoint,
                       write_profile=not no_profile, echo=echo)
    paths = write_reports(report, out)
    if as_json:
        click.echo(json.dumps(dict(report, rows=public_rows(report)), indent=2, default=str))
    else:
        for row in report["rows"]:
            name = "naive baseline" if row["kind"] == "baseline" else f"{row['backend']}/{row['artifact']}"
            if row.get("error"):
                click.echo(f"{name:32s} error: {row['error']}")
                continue
            click.echo(f"{name:32s} p50 {row.get('latency_p50_ms', 0):7.2f} ms  e2e {row.get('e2e_images_per_s', 0):7.1f} img/s"
                       f"  sens {row.get('sensitivity') if row.get('sensitivity') is not None else float('nan'):.3f}"
                       f"  agree {row.get('agreement') if row.get('agreement') is not None else float('nan'):.3f}"
                       f"  {'PASS' if row.get('passed') else ('-' if row['kind'] == 'baseline' else 'FAIL')}")
        click.echo(f"report: {paths['md']}")
    if report.get("plot_missing"):
        click.echo(f"note: {report['plot_missing']}", err=True)
    if not any(r.get("e2e_images_per_s") for r in report["rows"] if r["kind"] == "artifact"):
        raise DermsortError("no backend could be measured (see the report)")
