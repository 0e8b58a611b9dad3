"""``dermsort sort``, ``dermsort watch`` and ``dermsort info``: the light runtime's commands."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from .backends.base import backend_installed, backend_status, create_backend, get_backend_class, list_backends
from .bundle import DEFAULT_BUNDLE, load_bundle
from .diagnosis import diagnosis_name, head_summary, is_diagnosis_head, validation_lines
from .engine import load_profile, open_backend, profile_path, sorts, stale_reason
from .errors import DermsortError, OutputError
from .report_page import ReportRefresher, build_report, write_report_safely
from .scan import Candidate, ScanNotes, default_out, scan
from .signing import REQUIRE_ENV, require_signed_setting, trusted_key_dirs
from .sorter import SortOptions, Sorter

#: what sort/watch can run; the torch backend is a reference for bench/evaluate (never imported here)
BACKENDS = ["auto", "onnxruntime", "openvino", "tensorrt"]


class FilesLeftInPlace(DermsortError):
    """Some files could not be sorted and were left where they are (listed above): exit 3, so a script
    that empties a card after a clean run does not go on."""

    exit_code = 3


class Interrupted(DermsortError):
    """SIGINT/SIGTERM stopped ``sort`` before every image was sorted: non-zero, so a script does not
    go on (e.g. wipe the card) as if the folder were done."""

    exit_code = 130


def _remember_require_signed(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta["dermsort.require_signed"] = value
    return value


#: kept in the click context (not a parameter of every command): read by ``_signature_policy``
_REQUIRE_SIGNED = click.option(
    "--require-signed", is_flag=True, expose_value=False, callback=_remember_require_signed,
    help=f"Refuse a model bundle that no trusted key signed (also: {REQUIRE_ENV}=1, or require_signed = true in "
         "/etc/dermsort/config.toml or ~/.config/dermsort/config.toml).")


def _signature_policy() -> tuple[bool, str]:
    """(unsigned bundles refused?, who said so): --require-signed, else the environment / config files."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("dermsort.require_signed"):
        return True, "--require-signed"
    required, where = require_signed_setting()
    return required, f"require_signed in {where}" if where.endswith(".toml") else where


def _load_bundle(model: Path | None) -> tuple[Any, str | None]:
    required, why = _signature_policy()
    return load_bundle(model, require_signed=required, require_why=why)


def _model_options(fn):
    options = [
        click.option("--out", "out", type=click.Path(path_type=Path), default=None,
                     help="Output folder (gets benign/, review/, results.csv). Default: FOLDER-sorted beside FOLDER."),
        click.option("--move", is_flag=True, help="Move images instead of copying them (crash-safe)."),
        click.option("--recursive", "-r", is_flag=True, help="Also sort images in subfolders."),
        click.option("--keep-tree", "keep_tree", is_flag=True,
                     help="With --recursive: mirror the subfolders inside benign/ and review/ (default: flatten, "
                          "clashes get __N; the sub-path is always in results.csv's relpath)."),
        click.option("--backend", default="auto", show_default=True,
                     help=f"Inference backend: {'|'.join(BACKENDS)}."),
        click.option("--precision", default="auto", show_default=True, help="auto|fp32|fp16|bf16|int8 (artifacts in the bundle)."),
        click.option("--model", "model", type=click.Path(path_type=Path), default=None,
                     help="Model bundle folder, its manifest.json or one artifact in it. Default: the bundled model."),
        click.option("--threshold", type=float, default=None,
                     help="Override the validated operating threshold (P(malignant) below it -> benign). "
                          "The validated sensitivity no longer applies."),
        click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True,
                     help="Images per inference call (the default model runs each image and its mirror: 2x rows)."),
        click.option("--workers", type=click.IntRange(1, 64), default=None, help="Decode threads (default: CPU count)."),
        click.option("--threads", type=click.IntRange(1, 256), default=None, help="Inference threads."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout."),
        click.option("--allow-rejected-artifact", "allow_rejected", is_flag=True,
                     help="Run an artifact that the export's parity gate REJECTED (every row is marked)."),
        _REQUIRE_SIGNED,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _prepare(folder: Path, out: Path | None, backend: str, precision: str, model: Path | None,
             threshold: float | None, move: bool, recursive: bool, dry_run: bool, batch_size: int,
             workers: int | None, threads: int | None, allow_rejected: bool = False, keep_tree: bool = False):
    # a registered backend that does not sort (the torch reference): open_backend says why
    if backend not in list_backends() and backend != "auto":
        raise DermsortError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not folder.exists():
        raise DermsortError(f"input folder not found: {folder}")
    if not folder.is_dir():
        raise DermsortError(f"input is not a folder: {folder}")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise DermsortError(f"--threshold must be in (0, 1], got {threshold}")
    out = out if out is not None else default_out(folder)
    opts = SortOptions(out=out, move=move, recursive=recursive, dry_run=dry_run, threshold=threshold,
                       batch_size=batch_size, workers=workers, allow_rejected=allow_rejected, keep_tree=keep_tree)
    bundle, artifact_name = _load_bundle(model)
    engine = open_backend(bundle, backend, precision, artifact_name, threads=threads, allow_rejected=allow_rejected)
    _warn_threshold(engine, threshold)
    _warn_signature(bundle, engine)
    return bundle, engine, opts


def _warn_signature(bundle: Any, engine: Any) -> None:
    """Say when nothing but recomputable checks stand between an edited bundle and the decisions."""
    status = bundle.signature
    if status.state == "untrusted":
        click.echo(f"WARNING: the model bundle is signed by key {status.key_id}, which is not trusted here: it is "
                   f"treated as unsigned (to trust it, put its public key in {trusted_key_dirs()[-1]}).", err=True)
    if engine.embedded_check != "ok" and not status.trusted:
        click.echo(f"WARNING: {engine.artifact.path} carries no embedded threshold (bundle exported before dermsort "
                   f"wrote them, or a format without metadata) and the bundle is {status.describe()}: its threshold "
                   f"{engine.artifact.threshold:.4f} is checked only against the manifest; re-export the bundle or "
                   "sign it (`dermsort sign`).", err=True)


def _warn_threshold(engine: Any, threshold: float | None) -> None:
    """A threshold above the validated one sends more lesions to benign/: say so, loudly, on stderr."""
    validated = float(engine.artifact.threshold)
    if threshold is not None and threshold > validated:
        sens = engine.metadata.validation.sensitivity
        held = f" (validated sensitivity {sens:.1%})" if isinstance(sens, (int, float)) else ""
        click.echo(f"WARNING: --threshold {threshold:g} is ABOVE the validated threshold {validated:.4f} of "
                   f"{engine.artifact.name}: images with p_malignant between the two go to benign/, so malignant "
                   f"lesions may be sent to benign/ and the validated sensitivity{held} no longer holds. "
                   "Every row of results.csv is marked threshold_overridden.", err=True)
    if engine.artifact.rejected:
        click.echo(f"WARNING: running {engine.artifact.name}, which the export's parity gate REJECTED "
                   "(--allow-rejected-artifact); every row of results.csv is marked artifact_accepted=False.", err=True)


def _print_summary(summary: Any, bundle: Any, opts: SortOptions, as_json: bool, dry_run: bool,
                   folder: Path | None = None, report: Path | None = None) -> None:
    data = summary.to_dict()
    data.update({"model_id": bundle.model_id, "development_model": bundle.metadata.development_model,
                 "signature": bundle.signature.describe(),
                 "out": str(opts.out), "dry_run": dry_run, "mode": "move" if opts.move else "copy",
                 "report": str(report) if report else None})
    if dry_run:
        data["decisions"] = summary.decisions
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    echo = lambda s="": click.echo(s, err=False)  # noqa: E731
    if dry_run:
        for d in summary.decisions:
            echo(decision_line(d))
    verb = "would sort" if dry_run else "sorted"
    if summary.sorted == 0 and not summary.skipped_already_sorted and not summary.left_in_place:
        echo(f"no images found in {folder}" if folder is not None else "no images found")
    else:
        not_images = f", {summary.not_images} not an image (in review/)" if summary.not_images else ""
        echo(f"{verb} {summary.images} image(s): {summary.benign} benign, {summary.review - summary.not_images} "
             f"review{not_images} (work reduction {summary.work_reduction:.1%}) in {summary.seconds:.1f} s, "
             f"{summary.images_per_s:.1f} files/s")
    backend = summary.backend
    override = (f" (OVERRIDDEN by --threshold; validated {summary.validated_threshold:.4f})"
                if summary.threshold_overridden else "")
    echo(f"model {bundle.model_id} on {backend.get('backend')}/{backend.get('artifact')} "
         f"({backend.get('device')}), threshold {summary.threshold:.4f}{override}")
    echo(f"model bundle {bundle.signature.describe()}")
    if not summary.artifact_accepted:
        echo("note: this artifact was REJECTED by the export's parity gate (run with --allow-rejected-artifact)")
    if summary.in_subfolders:
        echo(f"{summary.in_subfolders} file(s) in subfolders were not sorted (use --recursive)")
    if summary.hidden:
        echo(f"{summary.hidden} hidden file(s) (names starting with '.') were not sorted")
    if summary.reconciled:
        echo(f"{summary.reconciled} file(s) found in the output without a journal record were recorded again")
    if bundle.metadata.development_model:
        echo("note: this is a DEVELOPMENT model, not validated for clinical use (see `dermsort info`)")
    if summary.skipped_already_sorted:
        echo(f"{summary.skipped_already_sorted} already sorted earlier (skipped)")
    if summary.recovered:
        echo(f"recovered {summary.recovered} placement(s) interrupted in an earlier run")
    for item in summary.left_in_place:
        echo(f"left in place (not sorted): {item['file']} ({item['reason']})")
    for item in summary.sources_kept:
        echo(f"sorted but kept in the input: {item['file']} ({item['reason']})")
    for item in summary.ignored:
        echo(f"ignored: {item['file']} ({item['reason']})")
    if not dry_run:
        echo(f"output: {opts.out}  (journal: {opts.out / '.dermsort' / 'journal.jsonl'}, results: {opts.out / 'results.csv'})")
    if report is not None:
        echo(f"review page: {report}")
    if summary.interrupted:
        echo("stopped early on request; re-run to sort the rest")


def decision_line(d: dict[str, Any]) -> str:
    """One image's line for people: decision, file, reason, and a diagnosis head's top class (display only)."""
    line = f"{d['decision']:7s} {d['file']}  ({d['reason']})"
    if d.get("top_dx"):
        p = d.get("top_dx_p")
        line += f"  [top dx: {d['top_dx']}" + (f" {p:.3f}" if isinstance(p, (int, float)) else "") + "]"
    return line


def _progress_bar(total: int, enabled: bool):
    if not enabled or total == 0 or not sys.stderr.isatty():
        return None
    return click.progressbar(length=total, label="sorting", file=sys.stderr, show_pos=True, show_eta=True)


class LineProgress:
    """Progress without a terminal (a service, a redirected log): one line on stderr every
    ``every_s`` seconds or every ``every_n`` images, whichever comes first."""

    def __init__(self, total: int, every_s: float = 10.0, every_n: int = 500, clock=time.monotonic):
        self.total, self.every_s, self.every_n, self.clock = total, every_s, every_n, clock
        self.done = 0
        self._start = self._last_t = clock()
        self._last_n = 0

    def update(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self._last_t >= self.every_s or self.done - self._last_n >= self.every_n:
            rate = self.done / (now - self._start) if now > self._start else 0.0
            click.echo(f"sorting: {self.done}/{self.total} images ({self.done / max(self.total, 1):.0%}), "
                       f"{rate:.1f} images/s", err=True)
            self._last_t, self._last_n = now, self.done


def _run_info(bundle: Any, opts: SortOptions, left_in_place: list[dict[str, str]],
              ignored: list[dict[str, str]]) -> dict[str, Any]:
    """What the review page needs beyond results.csv (see runtime/report_page.py)."""
    return {"bundle": str(bundle.root), "model_id": bundle.model_id, "signature": bundle.signature.describe(),
            "threshold_overridden": opts.threshold is not None, "threshold": opts.threshold,
            "left_in_place": list(left_in_place), "ignored": list(ignored)}


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@_model_options
@click.option("--dry-run", is_flag=True, help="Decide and print, but write and move nothing.")
def sort(folder: Path, out: Path | None, move: bool, recursive: bool, keep_tree: bool, backend: str, precision: str,
         model: Path | None, threshold: float | None, batch_size: int, workers: int | None, threads: int | None,
         as_json: bool, allow_rejected: bool, dry_run: bool) -> None:
    """Sort the images in FOLDER into OUT/benign/ and OUT/review/."""
    bundle, engine, opts = _prepare(folder, out, backend, precision, model, threshold, move, recursive,
                                    dry_run, batch_size, workers, threads, allow_rejected, keep_tree)
    stop = threading.Event()
    _install_signal_handlers(stop)
    try:
        sorter = Sorter(folder, opts, engine, stop=stop)
    except BaseException:
        engine.close()
        raise
    try:
        recovered = sorter.open()
        if sorter.journal_warning:
            click.echo(f"warning: {sorter.journal_warning}", err=True)
        notes = ScanNotes()
        files = scan(sorter.input_dir, recursive, notes=notes)
        bar = _progress_bar(len(files), not as_json)
        if bar is not None:
            with bar:
                summary = sorter.run(files, progress=bar.update)
        elif not as_json and files:
            summary = sorter.run(files, progress=LineProgress(len(files)).update)
        else:
            summary = sorter.run(files)
        summary.recovered = recovered
        summary.ignored = notes.ignored
        summary.in_subfolders, summary.hidden = notes.in_subfolders, notes.hidden
    finally:
        sorter.close()
        engine.close()
    # --dry-run writes nothing, so no page either (it prints each decision instead)
    report = None if dry_run else write_report_safely(
        sorter.out, bundle, _run_info(bundle, opts, summary.left_in_place, notes.ignored))
    _print_summary(summary, bundle, opts, as_json, dry_run, folder, report)
    if summary.interrupted:
        raise Interrupted("stopped on request before every image was sorted; re-run to sort the rest")
    if summary.results_error:
        raise OutputError(f"{summary.results_error}; every decision is in the journal: re-run to write it")
    if summary.left_in_place:
        raise FilesLeftInPlace(f"{len(summary.left_in_place)} file(s) could not be sorted and were left where "
                               "they are (listed above)")


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@_model_options
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds between scans of FOLDER.")
@click.option("--settle", type=click.FloatRange(0.0, 3600), default=2.0, show_default=True,
              help="A file is taken only after its size and time stamp stayed the same this long.")
@click.option("--max-cycles", type=int, default=None, hidden=True, help="Stop after this many scans (tests).")
def watch(folder: Path, out: Path | None, move: bool, recursive: bool, keep_tree: bool, backend: str, precision: str,
          model: Path | None, threshold: float | None, batch_size: int, workers: int | None, threads: int | None,
          as_json: bool, allow_rejected: bool, interval: float, settle: float, max_cycles: int | None) -> None:
    """Keep sorting new images as they arrive in FOLDER, until Ctrl-C or SIGTERM."""
    bundle, engine, opts = _prepare(folder, out, backend, precision, model, threshold, move, recursive,
                                    False, batch_size, workers, threads, allow_rejected, keep_tree)
    stop = threading.Event()
    _install_signal_handlers(stop)
    try:
        sorter = Sorter(folder, opts, engine, stop=stop)
    except BaseException:
        engine.close()
        raise
    totals = {"benign": 0, "review": 0}
    refresher = ReportRefresher(sorter.out, bundle, min_interval=5.0)
    left: list[dict[str, str]] = []
    try:
        sorter.open()
        if sorter.journal_warning:
            click.echo(f"warning: {sorter.journal_warning}", err=True)
        click.echo(f"watching {sorter.input_dir} -> {sorter.out} with {engine.describe().get('backend')}/"
                   f"{engine.artifact.name}; Ctrl-C to stop", err=True)
        seen: dict[str, tuple[int, int, float]] = {}
        cycles = 0
        while not stop.is_set():
            now = time.monotonic()
            ready: list[Candidate] = []
            if not sorter.input_dir.is_dir():
                raise DermsortError(f"input folder {sorter.input_dir} disappeared (deleted or unmounted); "
                                    "stopped watching")
            current = scan(sorter.input_dir, recursive)
            names = set()
            for cand in current:
                key = str(cand.path)
                names.add(key)
                sig = (cand.size, cand.mtime_ns)
                prev = seen.get(key)
                if prev is None or prev[:2] != sig:
                    seen[key] = (*sig, now)  # new or still growing: wait until it settles
                elif now - prev[2] >= settle:
                    ready.append(cand)
            for key in list(seen):
                if key not in names:
                    del seen[key]
            if ready:
                summary = sorter.run(ready)
                if summary.results_error:
                    click.echo(f"warning: {summary.results_error}", err=True)
                for key in ("benign", "review"):
                    totals[key] += getattr(summary, key)
                for d in summary.decisions:
                    line = {"time": time.strftime("%H:%M:%S"), **d} if as_json else None
                    click.echo(json.dumps(line) if as_json else decision_line(d))
                for cand in ready:
                    if not cand.path.exists():
                        seen.pop(str(cand.path), None)
                left = summary.left_in_place
                refresher.refresh(_run_info(bundle, opts, left, []))  # at most every 5 s
            cycles += 1
            if max_cycles is not None and cycles >= max_cycles:
                break
            stop.wait(interval)
    finally:
        sorter.close()
        engine.close()
    if (sorter.out / "results.csv").is_file():
        refresher.refresh(_run_info(bundle, opts, left, []), force=True)
    click.echo(f"stopped: {totals['benign']} benign, {totals['review']} review sorted while watching", err=True)


def _install_signal_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # second Ctrl-C: leave now; the journal makes this safe
            raise KeyboardInterrupt
        stop.set()
        click.echo("stopping after the current batch (Ctrl-C again to stop at once)...", err=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--model", "model", type=click.Path(path_type=Path), default=None,
              help="The bundle the run used, if it has moved (default: the one recorded by the run, else the bundled model).")
def report(out: Path, model: Path | None) -> None:
    """Rebuild OUT/report.html (the review page) from OUT/results.csv of any earlier run."""
    if not (out / "results.csv").is_file():
        raise DermsortError(f"no results.csv in {out}: not a dermsort output folder (sort into it first)")
    bundle = load_bundle(model)[0] if model is not None else None
    click.echo(f"review page: {build_report(out, bundle)}")


def _both_onnxruntime_builds() -> str:
    """The CPU and GPU builds of ONNX Runtime share one import name and shadow each other: say so if both are here."""
    from importlib import metadata

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    if len(found) < 2:
        return ""
    return (f"both {found[0]} and {found[1]} are installed and shadow each other; keep one "
            '(pip uninstall onnxruntime for CUDA/Jetson, or onnxruntime-gpu for CPU)')


def _embedded_threshold_check(bundle: Any, art: Any) -> str:
    """Load ``art`` with its own backend (if installed) to compare its threshold with the one inside the file:
    "ok", "not embedded", "backend not installed" or "FAILED: why"."""
    if not backend_installed(art.backend)[0] or not sorts(art.backend):
        return "backend not installed"
    try:
        engine = create_backend(art.backend, bundle, art).load()
    except DermsortError as exc:
        return f"FAILED: {exc}"
    except Exception as exc:  # e.g. an engine for another GPU: not this check's business
        return f"not checked ({type(exc).__name__})"
    engine.close()
    return engine.embedded_check


@click.command()
@click.option("--model", "model", type=click.Path(path_type=Path), default=None,
              help="Model bundle (default: the bundled model).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_REQUIRE_SIGNED
def info(model: Path | None, as_json: bool) -> None:
    """Show the model's metadata and which backends can run here (and why others cannot)."""
    bundle, _ = _load_bundle(model)
    meta = bundle.metadata
    backends = {}
    for name in list_backends():
        cls = get_backend_class(name)
        if cls is not None and not cls.spec.sorts:
            # never imported by info/sort/watch (torch takes seconds): metadata says whether it is installed
            ok, detail = backend_installed(name)
            detail += "; reference for `dermsort bench` / `evaluate`, not used by sort"
        else:
            ok, detail = backend_status(name)
        backends[name] = {"available": ok, "detail": detail}
    both = _both_onnxruntime_builds()
    if both:
        backends["onnxruntime"]["detail"] += f"; WARNING: {both}"
    checks, embedded = {}, {}
    for art in bundle.artifacts:
        try:
            bundle.verify(art)
            checks[art.name] = "ok"
        except DermsortError as exc:
            checks[art.name] = f"FAILED: {exc}"
        embedded[art.name] = _embedded_threshold_check(bundle, art) if checks[art.name] == "ok" else "not checked"
    profile = load_profile().get("models", {}).get(bundle.model_id)
    stale = stale_reason(profile, bundle) if isinstance(profile, dict) else ""
    data = {"bundle": str(bundle.root), "default_bundle": bundle.root == DEFAULT_BUNDLE.resolve(),
            "metadata": meta.to_dict(), "artifacts": [
                {"name": a.name, "backend": a.backend, "precision": a.precision, "threshold": a.threshold,
                 "size_bytes": a.size_bytes, "sha256": a.sha256, "accepted": a.accepted, "override": a.override,
                 "checksum": checks[a.name], "embedded_threshold": embedded[a.name]} for a in bundle.artifacts],
            "head": head_summary(meta.classes, meta.malignant_classes), "classes": list(meta.classes),
            "backends": backends, "machine_profile": {"path": str(profile_path()), "entry": profile, "stale": stale},
            "signature": bundle.signature.to_dict()}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    v = meta.validation
    click.echo(f"model        {meta.model_id}  ({meta.architecture})")
    if meta.development_model:
        click.echo("status       DEVELOPMENT MODEL - not validated for clinical use")
    click.echo(f"bundle       {bundle.root}")
    click.echo(f"signature    {bundle.signature.describe()}"
               + (f"  (trusted key {bundle.signature.key_source}; {bundle.signature.files} files)"
                  if bundle.signature.trusted else ""))
    click.echo(f"classes      {', '.join(meta.classes)}  (malignant: {', '.join(meta.malignant_classes)})")
    if is_diagnosis_head(meta.classes):
        click.echo(f"head         diagnosis ({len(meta.classes)} classes); P(malignant) = sum of "
                   f"{' + '.join(meta.malignant_classes)}; the top class is shown, it never changes a decision")
        for c in meta.classes:
            mark = "  malignant" if c in meta.malignant_classes else ""
            click.echo(f"               {c:6s} {diagnosis_name(c)}{mark}")
    else:
        click.echo(f"head         binary ({' / '.join(meta.classes)})")
    p = meta.preprocess
    click.echo(f"preprocess   shorter side -> {p.resize_shorter} px ({p.interpolation}), centre crop {p.input_size}, "
               f"/{p.scale:g}, mean {p.mean}, std {p.std}")
    click.echo(f"threshold    {meta.threshold:.4f}  (benign only if P(malignant) is below it; target sensitivity "
               f"{v.target_sensitivity:.0%})")

    def fmt(x: Any, ci: Any) -> str:
        if x is None:
            return "n/a"
        return f"{x:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    click.echo(f"validated    on {v.split or '?'} split of {', '.join(v.datasets) or '?'}: n={v.n_images} "
               f"({v.n_malignant} malignant)")
    click.echo(f"             sensitivity {fmt(v.sensitivity, v.sensitivity_ci)}, specificity "
               f"{fmt(v.specificity, v.specificity_ci)}, work reduction {fmt(v.work_reduction, None)}, "
               f"AUC {fmt(v.auc, v.auc_ci)}")
    for label, text in validation_lines(v.threshold_basis, v.per_dataset, v.per_diagnosis):
        click.echo(f"{label:12s} {text}".rstrip())
    prov = meta.provenance
    click.echo(f"provenance   data: {'; '.join(prov.training_data) or '?'}")
    click.echo(f"             code {prov.code_version or '?'}, created {prov.created or '?'}, pretrained "
               f"{prov.pretrained.get('package', 'none') if prov.pretrained else 'none'}")
    click.echo("artifacts")
    for a in data["artifacts"]:
        state = "accepted" if a["accepted"] else ("OVERRIDE: " + a["override"] if a["override"] else "rejected")
        click.echo(f"  {a['name']:18s} {a['backend']:12s} {a['precision']:5s} thr {a['threshold']:.4f} "
                   f"{a['size_bytes'] / 1e6:6.1f} MB  sha256 {a['sha256'][:12]}  checksum {a['checksum']}  {state}  "
                   f"embedded threshold {a['embedded_threshold']}")
    click.echo("backends")
    for name, st in backends.items():
        click.echo(f"  {name:12s} {'yes' if st['available'] else 'no ':3s}  {st['detail']}")
    if profile:
        best = profile["ranking"][0] if profile.get("ranking") else {}
        load = (profile.get("load") or {}).get("loadavg")
        click.echo(f"auto         {best.get('backend')}/{best.get('artifact')} ({profile.get('source')} {profile.get('time', '')}"
                   f"{f', load {load}' if load else ''}, {profile_path()})")
        if stale:
            click.echo(f"             stale ({stale}): the next sort probes again")
    else:
        click.echo("auto         no machine profile yet: the first sort probes the backends (or run `dermsort bench`)")
