"""``dermsort export`` and ``dermsort export-engines`` (imported lazily by the CLI group)."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

from . import calibration, formats
from .parity import Tolerances

#: exit status when the bundle was written but a requested artifact was rejected or failed to export
EXIT_INCOMPLETE = 3


def _say(message: str) -> None:
    click.echo(message, err=True)


@contextlib.contextmanager
def progress_to_stderr():
    """Everything written to stdout while exporting (NNCF/OpenVINO progress bars, library prints, even
    from C++) goes to stderr instead, so that stdout carries only the result (valid JSON with --json)."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (embedded use): the Python-level redirect still applies
        saved = None
    try:
        if saved is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _csv_list(values: tuple[str, ...]) -> list[str]:
    return [item for value in values for item in value.split(",") if item]


_DEFAULT = Tolerances()


def _gate_options(command):
    """The parity gate's tolerances, shared by export and export-engines (they land in Tolerances and the manifest)."""
    options = [
        click.option("--max-sensitivity-drop", default=_DEFAULT.max_sensitivity_drop, show_default=True,
                     type=click.FloatRange(0, 1),
                     help="Parity gate (a): largest sensitivity drop vs the FP32 reference (fraction). Also: no "
                          "malignant image newly sent to benign beyond floor((sens_ref - target) x n_malignant)."),
        click.option("--max-specificity-drop", default=_DEFAULT.max_specificity_drop, show_default=True,
                     type=click.FloatRange(0, 1),
                     help="Parity gate (b): largest specificity drop vs the reference after threshold recalibration."),
        click.option("--max-flip-rate", default=_DEFAULT.max_flip_rate, show_default=True,
                     type=click.FloatRange(0, 1),
                     help="Parity gate (c): largest share of benign/review decisions (both directions) that may "
                          "differ from the reference."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _tolerances(max_sensitivity_drop: float, max_specificity_drop: float, max_flip_rate: float) -> Tolerances:
    return Tolerances(max_sensitivity_drop=max_sensitivity_drop, max_flip_rate=max_flip_rate,
                      max_specificity_drop=max_specificity_drop)


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Bundle folder to write (an existing bundle there is replaced atomically).")
@click.option("--to", "to", default="onnx,openvino,tensorrt", show_default=True,
              help=f"Comma-separated targets: {', '.join(formats.TOOLKITS)}.")
@click.option("--precision", "precision", default="fp32,fp16,bf16,int8", show_default=True,
              help=f"Comma-separated precisions: {', '.join(formats.PRECISIONS)} (FP32 ONNX is always written).")
@click.option("--calib", "calib", multiple=True,
              help="Folder of real images or labels.csv (its train split) for INT8 calibration; repeatable; "
                   "needed only for int8. Images are drawn round-robin across the sources (an even mix of data sets).")
@click.option("--labelled", "labelled", multiple=True,
              help="labels.csv for the parity gate, its --labelled-split rows of every one "
                   "(default: those of every --calib CSV); repeatable.")
@click.option("--labelled-split", default=calibration.GATE_SPLIT, show_default=True,
              help="Which split of the labelled CSVs the gate runs on.")
@click.option("--calib-count", default=128, show_default=True, type=click.IntRange(1, 10_000),
              help="Number of calibration images (train split only, mixed across the --calib sources).")
@click.option("--allow-parity-failure", is_flag=True,
              help="Keep artifacts that fail the parity gate (recorded as an override in the manifest).")
@click.option("--accuracy-control", type=click.Choice(["off", "auto", "on"]), default="off", show_default=True,
              help="NNCF accuracy-controlled INT8 for OpenVINO (auto: only when plain INT8 would fail the parity "
                   "gate; slow).")
@_gate_options
@click.option("--sign-key", "sign_key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="ed25519 private key (`dermsort keygen`) that signs every file of the bundle; the runtime "
                   "verifies it against its trusted public keys (docs/RELIABILITY.md, model integrity).")
@click.option("--ood", "ood", type=click.Path(exists=True), default=None,
              help="Folder with ood.csv (non-dermoscopy images): a gated model's parity gate also compares every "
                   "artifact's not-dermoscopy decisions on its --labelled-split images.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest's artifact list as JSON on stdout.")
def export(checkpoint: str, out: str, to: str, precision: str, calib: tuple[str, ...], labelled: tuple[str, ...],
           labelled_split: str, calib_count: int, allow_parity_failure: bool, accuracy_control: str,
           max_sensitivity_drop: float, max_specificity_drop: float, max_flip_rate: float, sign_key: str | None,
           ood: str | None, as_json: bool) -> None:
    """Export a training checkpoint to a verified model bundle (ONNX, OpenVINO, TensorRT)."""
    from .api import export_bundle

    with progress_to_stderr():
        bundle = export_bundle(checkpoint, out, to=to, precisions=precision, calib=_csv_list(calib),
                               labelled=_csv_list(labelled), allow_parity_failure=allow_parity_failure,
                               calib_count=calib_count, labelled_split=labelled_split,
                               accuracy_control=accuracy_control,
                               tolerances=_tolerances(max_sensitivity_drop, max_specificity_drop, max_flip_rate),
                               say=_say, sign_key=sign_key, ood=ood)
    info = bundle.extra.get("export", {})
    _finish(bundle, as_json, [r["name"] for r in info.get("rejected", [])] + list(info.get("failed", {})),
            info.get("skipped", {}))


@click.command("export-engines")
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--precision", "precision", default="fp16,int8", show_default=True,
              help="Comma-separated engine precisions: fp16, int8.")
@click.option("--labelled", "labelled", multiple=True,
              help="labels.csv for the parity gate on this device. Without it the engines must agree with the "
                   "FP32 reference on the bundle's verification set (or --verify-images); no labels needed.")
@click.option("--labelled-split", default=calibration.GATE_SPLIT, show_default=True)
@click.option("--verify-images", "verify_images", multiple=True,
              help="Folder of your own images (no labels) to verify the engines on instead of the bundle's "
                   "set: 24 of them, chosen away from the threshold on both sides; repeatable.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="Largest batch of the engines' optimization profile (smallest is 1).")
@click.option("--allow-parity-failure", is_flag=True, help="Keep engines that fail the parity gate (recorded).")
@_gate_options
@click.option("--json", "as_json", is_flag=True, help="Print the manifest's artifact list as JSON on stdout.")
def export_engines(bundle_dir: str, precision: str, labelled: tuple[str, ...], labelled_split: str,
                   verify_images: tuple[str, ...], max_batch: int, allow_parity_failure: bool,
                   max_sensitivity_drop: float, max_specificity_drop: float,
                   max_flip_rate: float, as_json: bool) -> None:
    """Build TensorRT engines into an existing bundle, on the target GPU (e.g. the Jetson)."""
    from .engines import export_engines as build

    with progress_to_stderr():
        bundle = build(bundle_dir, precisions=precision, labelled=_csv_list(labelled), labelled_split=labelled_split,
                       allow_parity_failure=allow_parity_failure, max_batch=max_batch,
                       tolerances=_tolerances(max_sensitivity_drop, max_specificity_drop, max_flip_rate), say=_say,
                       verify_images=list(verify_images))
    engines = bundle.extra.get("engines", {})
    # an engine that failed to build is a requested artifact missing: exit 3, as for a rejected one
    _finish(bundle, as_json, [r["name"] for r in engines.get("rejected", [])] + list(engines.get("failed", {})),
            engines.get("skipped", {}))


def _finish(bundle, as_json: bool, problems: list[str], skipped: dict[str, str]) -> None:
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle.root), "artifacts": [
            {"name": a.name, "precision": a.precision, "backend": a.backend, "accepted": a.accepted,
             "override": a.override, "threshold": a.threshold, "size_bytes": a.size_bytes} for a in bundle.artifacts],
            "rejected": problems, "skipped": skipped}, indent=2))
    else:
        for art in bundle.artifacts:
            state = "accepted" if art.accepted else f"override ({art.override.split(':')[0]})"
            click.echo(f"{art.name:15s} {art.precision:5s} {art.size_bytes / 1e6:7.2f} MB  threshold "
                       f"{art.threshold:.4f}  {state}")
        for name, reason in skipped.items():
            click.echo(f"{name:15s} {reason}")
        click.echo(f"report: {bundle.root / 'export_report.md'}")
    if problems:
        click.echo(f"dermsort: {len(problems)} requested artifact(s) not in the bundle: {', '.join(problems)} "
                   "(see the report)", err=True)
        sys.exit(EXIT_INCOMPLETE)
