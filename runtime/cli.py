"""``dermsort sort``, ``dermsort watch`` and ``dermsort info``: the light runtime's commands."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import click

from .backends.base import (backend_installed, backend_status, create_backend, get_backend_class, list_backends,
                            runtime_backends)
from .bundle import DEFAULT_BUNDLE, load_bundle
from . import drift, site, site_page
from .counts import Counts
from .diagnosis import diagnosis_name, head_summary, is_diagnosis_head, validation_lines
from .engine import auto_choice, load_profile, open_backend, profile_path, sorts, stale_reason
from .errors import DermsortError, OutputError
from .report_page import ReportRefresher, artifact_figures, build_report, reference_artifact, write_report_checked
from .scan import Candidate, ScanNotes, default_out, scan
from .signing import REQUIRE_ENV, require_signed_setting, trusted_key_dirs
from .sorter import SortOptions, Sorter
from .watching import watch_loop

#: what sort/watch offer by name: the runtime's own backends (the torch reference, registered from train/, is
#: for bench/evaluate and is never imported here); read from the registry, importing no backend
BACKENDS = ["auto", *runtime_backends()]


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
        click.option("--site-profile", "site_profile", type=click.Path(path_type=Path), default=None,
                     help="Use the site threshold of this profile (written by `dermsort validate --write-site-profile`). "
                          "Default: $XDG_CONFIG_HOME/dermsort/site-profile.json if that file exists."),
        click.option("--no-site-profile", "no_site_profile", is_flag=True,
                     help="Ignore the default site profile (use the validated threshold)."),
        _REQUIRE_SIGNED,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _prepare(folder: Path, out: Path | None, backend: str, precision: str, model: Path | None,
             threshold: float | None, move: bool, recursive: bool, dry_run: bool, batch_size: int,
             workers: int | None, threads: int | None, allow_rejected: bool = False, keep_tree: bool = False,
             site_profile: Path | None = None, no_site_profile: bool = False, probe_if_fewer: bool = True):
    # a registered backend that does not sort (the torch reference): open_backend says why
    if keep_tree and not recursive:
        raise DermsortError("--keep-tree needs --recursive (it mirrors the subfolders that --recursive sorts)")
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
    profile = site.find_profile(site_profile, no_site_profile)
    if profile is not None:
        site.check_profile(profile, bundle)
        if backend == "auto" and precision == "auto" and artifact_name is None:
            artifact_name = profile.artifact  # the artifact the site's figures were measured on
    # `auto` without a machine profile probes the candidates (loading, and compiling, each): worth it only when
    # there is enough to sort; a handful of images runs on the reference order, and a later, bigger run probes
    probe = probe_if_fewer or _at_least(folder, recursive, PROBE_MIN_IMAGES)
    engine = open_backend(bundle, backend, precision, artifact_name, threads=threads, allow_rejected=allow_rejected,
                          probe=probe)
    try:
        if profile is not None:
            site.check_profile(profile, bundle, engine.artifact)
            if threshold is None and profile.threshold > float(engine.artifact.threshold) + 1e-12:
                raise DermsortError(site.raised_threshold_error(profile, float(engine.artifact.threshold)))
            opts.site_threshold, opts.site_profile = profile.threshold, profile.label
    except BaseException:
        engine.close()
        raise
    _warn_threshold(engine, threshold)
    _warn_signature(bundle, engine)
    return bundle, engine, opts, profile


#: `dermsort sort` probes the backends (no valid machine profile yet) only for at least this many images: the
#: probe loads every candidate (~0.5-1 s on 2 cores), which a few images cannot pay back
PROBE_MIN_IMAGES = 64


def _at_least(folder: Path, recursive: bool, n: int) -> bool:
    """Does FOLDER hold at least ``n`` files (in its subfolders too with ``recursive``)? Stops counting at ``n``."""
    count, todo = 0, [folder]
    while todo:
        try:
            with os.scandir(todo.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_file(follow_symlinks=False):
                        count += 1
                        if count >= n:
                            return True
                    elif recursive and entry.is_dir(follow_symlinks=False):
                        todo.append(Path(entry.path))
        except OSError:
            continue
    return False


@dataclass
class Session:
    """What sort and watch run with: the bundle, the loaded backend, the options, the site profile and the
    opened sorter."""

    bundle: Any
    engine: Any
    opts: SortOptions
    profile: Any
    sorter: Sorter
    #: what ``Sorter.open`` finished of a run that was killed half-way
    recovered: int


@contextlib.contextmanager
def _session(folder: Path, stop: threading.Event, *, signals_first: bool, announce_profile: bool,
             **prepare: Any) -> Iterator[Session]:
    """The one start-up of ``sort`` and ``watch``: check the options and open the model (``_prepare``, its warnings
    on stderr), install the signal handlers that set ``stop``, open the sorter on FOLDER (recovering its journal);
    the sorter and the backend are closed on the way out, whatever happens.

    ``signals_first``: install the handlers before the model loads (watch: a stop requested at any moment gets the
    same exit status) rather than once it has loaded (sort).
    """
    if signals_first:
        _install_signal_handlers(stop)
    bundle, engine, opts, profile = _prepare(folder, **prepare)
    if not signals_first:
        _install_signal_handlers(stop)
    try:
        sorter = Sorter(folder, opts, engine, stop=stop)
    except BaseException:
        engine.close()
        raise
    try:
        if announce_profile and profile is not None:
            click.echo(profile.line(), err=True)
        recovered = sorter.open()
        if sorter.journal_warning:
            click.echo(f"warning: {sorter.journal_warning}", err=True)
        yield Session(bundle, engine, opts, profile, sorter, recovered)
    finally:
        sorter.close()
        engine.close()


def _drift(bundle: Any, engine: Any, opts: SortOptions, profile: Any, decisions: list[dict[str, Any]]
           ) -> dict[str, Any]:
    threshold = opts.threshold if opts.threshold is not None else (
        opts.site_threshold if opts.site_threshold is not None else float(engine.artifact.threshold))
    ref = drift.reference_for(bundle, float(threshold), float(engine.artifact.threshold), profile)
    return drift.assess(decisions, ref)


def _record_drift(result: dict[str, Any], bundle: Any, engine: Any, opts: SortOptions, folder: Path) -> None:
    drift.record(result, opts.out, {"input": str(folder), "out": str(opts.out), "model_id": bundle.model_id,
                                    "artifact": engine.artifact.name, "site_profile": opts.site_profile})


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
                   folder: Path | None = None, report: Path | None = None, profile: Any = None,
                   drift_result: dict[str, Any] | None = None) -> None:
    data = summary.to_dict()
    data.update({"model_id": bundle.model_id, "development_model": bundle.metadata.development_model,
                 "signature": bundle.signature.describe(),
                 "out": str(opts.out), "dry_run": dry_run, "mode": "move" if opts.move else "copy",
                 "report": str(report) if report else None,
                 "site_profile": profile.summary() if profile is not None else None, "drift": drift_result})
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
    if summary.sorted == 0 and not summary.skipped_already_sorted and not summary.left_in_place \
            and not summary.same_as_sorted:
        echo(f"no images found in {folder}" if folder is not None else "no images found")
    else:
        echo(f"{summary.counts.headline(verb)} in {summary.seconds:.1f} s, {summary.images_per_s:.1f} files/s")
    backend = summary.backend
    override = (f" (OVERRIDDEN by --threshold; validated {summary.validated_threshold:.4f})"
                if summary.threshold_overridden else "")
    echo(f"model {bundle.model_id} on {backend.get('backend')}/{backend.get('artifact')} "
         f"({backend.get('device')}), threshold {summary.threshold:.4f}{override}")
    echo(f"model bundle {bundle.signature.describe()}")
    if profile is not None:
        echo(profile.line())
    if drift_result is not None:
        echo(drift.line(drift_result))
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
    for item in summary.same_as_sorted:
        echo(f"already sorted under another name: {item['file']} has the same bytes as {item['dest']} "
             "(recorded, not copied again)")
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


def gate_lines(gate: Any) -> list[str]:
    """``info``'s lines about the not-dermoscopy gate: what it is, its threshold and its validated rates."""
    if not gate.enabled:
        return ["gate         none: this model has no not-dermoscopy gate (any colour image is judged as dermoscopy)"]
    features = str((gate.details or {}).get("features") or "penultimate features").split(", mean of")[0]
    lines = [f"gate         not-dermoscopy gate ({gate.method} on {features}): score >= "
             f"{gate.threshold:.4f} -> review/ ('not recognised as a dermoscopy image')"]
    for split in ("val", "test"):
        r = gate.validated.get(split) or {}
        derm = ", ".join(f"{s} {100 * v['rejected_rate']:.1f} %" for s, v in (r.get("dermoscopy") or {}).items()
                         if v.get("n") and v.get("rejected_rate") is not None)
        ood = ", ".join(f"{k} {v['reached_benign']}/{v['n']} (AUROC {v['auroc']:.3f})"
                        for k, v in (r.get("ood") or {}).items() if not k.startswith("rendered") and v.get("auroc")
                        is not None)
        if derm:
            lines.append(f"             {split}: dermoscopy rejected {derm}")
        if ood:
            lines.append(f"             {split}: non-dermoscopy reaching benign/ {ood}")
    return lines


def _changed_nothing(summary: Any, notes: Any) -> bool:
    """Nothing sorted, recovered, reconciled, re-recorded, left in place or ignored in this run."""
    return not (summary.sorted or summary.recovered or summary.reconciled or summary.same_as_sorted
                or summary.left_in_place or summary.sources_kept or getattr(notes, "ignored", None))


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
              ignored: list[dict[str, str]], profile: Any = None, drift_result: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """What the review page needs beyond results.csv (see runtime/report_page.py)."""
    return {"bundle": str(bundle.root), "model_id": bundle.model_id, "signature": bundle.signature.describe(),
            "threshold_overridden": opts.threshold is not None, "threshold": opts.threshold,
            "left_in_place": list(left_in_place), "ignored": list(ignored),
            "site_profile": profile.summary() if profile is not None else None,
            "site_profile_line": profile.line() if profile is not None else "",
            "drift": drift_result, "drift_line": drift.line(drift_result) if drift_result else ""}


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@_model_options
@click.option("--dry-run", is_flag=True, help="Decide and print, but write and move nothing.")
def sort(folder: Path, out: Path | None, move: bool, recursive: bool, keep_tree: bool, backend: str, precision: str,
         model: Path | None, threshold: float | None, batch_size: int, workers: int | None, threads: int | None,
         as_json: bool, allow_rejected: bool, site_profile: Path | None, no_site_profile: bool, dry_run: bool) -> None:
    """Sort the images in FOLDER into OUT/benign/ and OUT/review/."""
    with _session(folder, threading.Event(), signals_first=False, announce_profile=False, out=out, backend=backend,
                  precision=precision, model=model, threshold=threshold, move=move, recursive=recursive,
                  dry_run=dry_run, batch_size=batch_size, workers=workers, threads=threads,
                  allow_rejected=allow_rejected, keep_tree=keep_tree, site_profile=site_profile,
                  no_site_profile=no_site_profile, probe_if_fewer=False) as run:
        bundle, engine, opts, profile, sorter = run.bundle, run.engine, run.opts, run.profile, run.sorter
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
        summary.recovered = run.recovered
        summary.ignored = notes.ignored
        summary.in_subfolders, summary.hidden = notes.in_subfolders, notes.hidden
        drift_result = _drift(bundle, engine, opts, profile, summary.decisions)
    if not dry_run and summary.sorted:
        _record_drift(drift_result, bundle, engine, opts, sorter.input_dir)
    # --dry-run writes nothing, so no page either (it prints each decision instead)
    report, page_problem = None, ""
    if dry_run:
        pass
    elif summary.results_error:  # the page is built from results.csv: it would show the old one
        page_problem = (f"the review page {sorter.out / 'report.html'} was not updated (results.csv could not be "
                        "written); it is stale")
    elif _changed_nothing(summary, notes) and (sorter.out / "report.html").is_file():
        report = sorter.out / "report.html"  # a re-run that sorted nothing leaves OUT exactly as it was
    else:
        report, page_problem = write_report_checked(
            sorter.out, bundle, _run_info(bundle, opts, summary.left_in_place, notes.ignored, profile, drift_result))
    _print_summary(summary, bundle, opts, as_json, dry_run, folder, report, profile, drift_result)
    if page_problem:
        click.echo(f"warning: {page_problem}", err=True)
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
          as_json: bool, allow_rejected: bool, site_profile: Path | None, no_site_profile: bool, interval: float,
          settle: float, max_cycles: int | None) -> None:
    """Keep sorting new images as they arrive in FOLDER, until SIGTERM (exit 0) or Ctrl-C (exit 130)."""
    stop = StopRequest()
    totals = Counts()
    left: list[dict[str, str]] = []
    seen_decisions: list[dict[str, Any]] = []  # this session's, for the drift check
    drift_result: dict[str, Any] | None = None
    with _session(folder, stop, signals_first=True, announce_profile=True, out=out, backend=backend,
                  precision=precision, model=model, threshold=threshold, move=move, recursive=recursive,
                  dry_run=False, batch_size=batch_size, workers=workers, threads=threads,
                  allow_rejected=allow_rejected, keep_tree=keep_tree, site_profile=site_profile,
                  no_site_profile=no_site_profile) as run:
        bundle, engine, opts, profile, sorter = run.bundle, run.engine, run.opts, run.profile, run.sorter
        refresher = ReportRefresher(sorter.out, bundle, min_interval=5.0)
        click.echo(f"watching {sorter.input_dir} -> {sorter.out} with {engine.describe().get('backend')}/"
                   f"{engine.artifact.name}; Ctrl-C to stop", err=True)

        def sort_batch(ready: list[Candidate]) -> None:
            nonlocal left, drift_result
            summary = sorter.run(ready)
            if summary.results_error:
                click.echo(f"warning: {summary.results_error}", err=True)
            for key, n in vars(summary.counts).items():
                setattr(totals, key, getattr(totals, key) + n)
            for d in summary.decisions:
                line = {"time": time.strftime("%H:%M:%S"), **d} if as_json else None
                click.echo(json.dumps(line) if as_json else decision_line(d))
            left = summary.left_in_place
            seen_decisions.extend({k: d.get(k) for k in ("decision", "p_malignant", "reason")}
                                  for d in summary.decisions)
            del seen_decisions[:-5000]  # the recent ones are enough to judge drift
            drift_result = _drift(bundle, engine, opts, profile, seen_decisions)
            refresher.refresh(_run_info(bundle, opts, left, [], profile, drift_result))  # at most every 5 s

        watch_loop(sorter.input_dir, recursive, sort_batch, stop, interval, settle, max_cycles)
    if drift_result is not None:
        _record_drift(drift_result, bundle, engine, opts, sorter.input_dir)
    if (sorter.out / "results.csv").is_file():
        refresher.refresh(_run_info(bundle, opts, left, [], profile, drift_result), force=True)
    click.echo(f"stopped: {totals.headline('sorted')} while watching", err=True)
    if drift_result is not None:
        click.echo(drift.line(drift_result), err=True)
    if stop.signum == signal.SIGINT:
        raise Interrupted("stopped by Ctrl-C (SIGINT); nothing is half-done")


class StopRequest(threading.Event):
    """Set by SIGINT/SIGTERM; remembers the first signal (``watch``: SIGTERM is a clean stop, exit 0;
    SIGINT / Ctrl-C exits 130)."""

    signum: int | None = None


def _install_signal_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():  # second Ctrl-C: leave now; the journal makes this safe
            raise KeyboardInterrupt
        if isinstance(stop, StopRequest):
            stop.signum = signum
        stop.set()
        click.echo("stopping after the current batch (Ctrl-C again to stop at once)...", err=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


@click.command()
@click.option("--data", "data", type=click.Path(path_type=Path), required=True,
              help="Labelled folder with labels.csv (columns file, malignant; optional dx, split).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Folder for validation.html and validation.json.")
@click.option("--model", "model", type=click.Path(path_type=Path), default=None,
              help="Model bundle (default: the bundled model).")
@click.option("--split", default=None, help="Only the rows of labels.csv with this split (default: all rows).")
@click.option("--target-sensitivity", "target", type=float, default=0.95, show_default=True,
              help="The sensitivity the site threshold must reach on the site's malignant cases.")
@click.option("--backend", default="auto", show_default=True, help=f"Inference backend: {'|'.join(BACKENDS)}.")
@click.option("--precision", default="auto", show_default=True, help="auto|fp32|fp16|bf16|int8.")
@click.option("--write-site-profile", "profile_out", type=click.Path(path_type=Path), default=None,
              help="Write the site threshold to this site profile (for sort/watch --site-profile).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Decode threads (default: CPU count).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="Inference threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def validate(data: Path, out: Path, model: Path | None, split: str | None, target: float, backend: str,
             precision: str, profile_out: Path | None, workers: int | None, threads: int | None,
             as_json: bool) -> None:
    """Measure the model on this site's labelled cases: does the validated sensitivity hold here?"""
    if not 0.0 < target < 1.0:
        raise DermsortError(f"--target-sensitivity must be in (0, 1), got {target}")
    if not data.is_dir():
        raise DermsortError(f"labelled folder not found: {data}")
    cases = site.read_labels(data, split)
    bundle, artifact_name = load_bundle(model)
    engine = open_backend(bundle, backend, precision, artifact_name, threads=threads)
    try:
        bar = _progress_bar(len(cases), not as_json)
        if bar is not None:
            with bar:
                scored = site.score_cases(bundle, engine, cases, out, workers=workers, progress=bar.update)
        else:
            scored = site.score_cases(bundle, engine, cases, out, workers=workers)
        report = site.validation_report(bundle, engine, scored, target, {"folder": str(data), "split": split})
    finally:
        engine.close()
    profile_error = ""
    if profile_out is not None:
        try:
            written = site.write_profile(site.make_profile(report), profile_out)
            report["site_profile_written"] = str(written)
        except DermsortError as exc:
            profile_error = str(exc)
    json_path, html_path = site_page.write(report, out)
    if as_json:
        click.echo(json.dumps(report, indent=1, default=str))
    else:
        for line in site.format_report(report):
            click.echo(line)
        if report.get("site_profile_written"):
            click.echo(f"site profile: {report['site_profile_written']} (use it with sort/watch --site-profile)")
        click.echo(f"report: {html_path}  (figures: {json_path})")
    if profile_error:
        raise DermsortError(profile_error)


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
@click.option("--site-profile", "site_profile", type=click.Path(path_type=Path), default=None,
              help="Show this site profile (default: $XDG_CONFIG_HOME/dermsort/site-profile.json if it exists).")
@_REQUIRE_SIGNED
def info(model: Path | None, as_json: bool, site_profile: Path | None) -> None:
    """Show the model's metadata and which backends can run here (and why others cannot)."""
    bundle, _ = _load_bundle(model)
    profile = site.find_profile(site_profile)
    if profile is not None:
        site.check_profile(profile, bundle)
    runs = drift.recent(10)
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
    site_info = profile
    profile = load_profile().get("models", {}).get(bundle.model_id)
    stale = stale_reason(profile, bundle) if isinstance(profile, dict) else ""
    choice, why = auto_choice(bundle)
    auto_art = choice[1] if choice else reference_artifact(bundle)
    auto = {"backend": choice[0] if choice else None, "artifact": auto_art.name if auto_art else None,
            "threshold": auto_art.threshold if auto_art else meta.threshold, "how": why,
            "figures": artifact_figures(bundle, auto_art.name) if auto_art else None}
    data = {"bundle": str(bundle.root), "default_bundle": bundle.root == DEFAULT_BUNDLE.resolve(), "auto": auto,
            "metadata": meta.to_dict(), "artifacts": [
                {"name": a.name, "backend": a.backend, "precision": a.precision, "threshold": a.threshold,
                 "size_bytes": a.size_bytes, "sha256": a.sha256, "accepted": a.accepted, "override": a.override,
                 "checksum": checks[a.name], "figures": artifact_figures(bundle, a.name),
                 "embedded_threshold": embedded[a.name]} for a in bundle.artifacts],
            "head": head_summary(meta.classes, meta.malignant_classes), "classes": list(meta.classes),
            "backends": backends, "machine_profile": {"path": str(profile_path()), "entry": profile, "stale": stale},
            "site_profile": site_info.summary() if site_info is not None else None,
            "site_profile_default": str(site.default_profile_path()), "recent_runs": runs,
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
               f"/{p.scale:g}, mean {p.mean}, std {p.std}"
               + (f", colour constancy {p.color_constancy} (p={p.color_constancy_power:g})"
                  if p.color_constancy != "none" else ""))

    def fmt(x: Any, ci: Any) -> str:
        if x is None:
            return "n/a"
        return f"{x:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    for line in gate_lines(meta.gate):
        click.echo(line)

    # the threshold `sort` applies, with the figures of that artifact (each artifact has its own threshold)
    if choice:
        click.echo(f"threshold    {auto['threshold']:.4f}  ({choice[0]}/{auto['artifact']}: what `sort --backend auto` "
                   f"runs here, {why}; benign only if P(malignant) is below it; target sensitivity "
                   f"{v.target_sensitivity:.0%})")
    else:
        click.echo(f"threshold    {auto['threshold']:.4f}  (the reference {auto['artifact']}; `sort --backend auto`: "
                   f"{why}; every artifact runs at its own threshold, listed below)")
    fig = auto["figures"]
    if fig:
        click.echo(f"             at it: sensitivity {fmt(fig['sensitivity'], fig['sensitivity_ci'])}, specificity "
                   f"{fmt(fig['specificity'], fig['specificity_ci'])} ({fig['source']})")

    ref_art = reference_artifact(bundle)
    click.echo(f"reference    {ref_art.name if ref_art else bundle.reference} validated on {v.split or '?'} split of {', '.join(v.datasets) or '?'}: n={v.n_images} "
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
        gate = next(x for x in bundle.artifacts if x.name == a["name"]).parity or {}  # one data set for all
        click.echo(f"  {a['name']:18s} {a['backend']:12s} {a['precision']:5s} thr {a['threshold']:.4f} "
                   f"parity sens {fmt(gate.get('sensitivity'), None)} spec {fmt(gate.get('specificity'), None)} "
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
    if site_info is not None:
        click.echo(f"site         {site_info.line()}")
    else:
        click.echo(f"site         no site profile (the validated threshold applies; `dermsort validate "
                   f"--write-site-profile {site.default_profile_path()}` makes one)")
    if runs:
        click.echo(f"recent runs  (drift against validation; {drift.state_dir() / drift.HISTORY})")
        for r in runs:
            share = r.get("benign_share")
            band = r.get("benign_band")
            flag = "DRIFT: " + "; ".join(r.get("departures") or []) if r.get("alarm") else "ok"
            click.echo(f"  {str(r.get('time', ''))[:19]}  {r.get('n_images', 0):5d} images  benign "
                       f"{'n/a' if share is None else f'{share:.0%}'}"
                       f"{f' (expected {band[0]}-{band[1]})' if band else ''}  not dermoscopy {r.get('ood_rejected', 0)}"
                       f"  {r.get('artifact', '')}{' ' + r['site_profile'] if r.get('site_profile') else ''}  {flag}")
