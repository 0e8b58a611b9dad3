"""``OUT/report.html``: the review page a clinician opens by double-click after a sort.

One self-contained, offline file (no server, no CDN, no external fonts or scripts) built from
``OUT/results.csv``, the thumbnails in ``OUT/.dermsort/thumbs/`` (runtime/thumbs.py) and the model
bundle's metadata. Every file name and every CSV cell is untrusted: text is HTML-escaped, links
are percent-encoded relative paths inside OUT, and a Content-Security-Policy allows only the
page's own style sheet and script (by hash), so a name can never become markup or code.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from .counts import MODEL_REASON, NEAR_LOGODDS, Counts, is_input_problem, is_not_dermoscopy, near_threshold  # noqa: F401
from .errors import DermsortError
from .results_csv import FORMULA_PREFIXES
from .metadata import PreprocessSpec
from .report_assets import CSS, JS
from .thumbs import save_thumbnail, thumb_name

log = logging.getLogger(__name__)

REPORT = "report.html"
THUMBS = Path(".dermsort") / "thumbs"
#: what the CLI knew about the last run (bundle, override, files left in place), for `dermsort report`
RUN_INFO = Path(".dermsort") / "report-run.json"


@dataclass
class Row:
    seq: int
    file: str
    source: str
    dest: str
    sha256: str
    decision: str
    p: float | None
    threshold: float | None
    backend: str
    artifact: str
    model_id: str
    time: str
    reason: str
    top_dx: str
    top_dx_p: float | None
    #: the site profile whose threshold applied (results.csv column site_profile; empty without one)
    site_profile: str = ""
    #: results.csv ``status`` (e.g. "superseded by DEST ..."); empty normally
    status: str = ""
    #: results.csv's ``signature``: who vouched for the bundle that decided (empty for older rows)
    signature: str = ""
    #: results.csv's ``gate_score`` (the not-dermoscopy gate); None without a gate
    gate_score: float | None = None

    @property
    def problem(self) -> bool:
        return is_input_problem(self.reason)

    @property
    def not_dermoscopy(self) -> bool:
        return self.decision == "review" and is_not_dermoscopy(self.reason)

    @property
    def superseded(self) -> bool:
        return self.status.startswith("superseded")

    def as_counted(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "p_malignant": self.p, "threshold": self.threshold,
                "status": self.status}

    @property
    def name(self) -> str:
        return self.dest.rsplit("/", 1)[-1] if self.dest else os.path.basename(self.file)


def _cell(value: str | None) -> str:
    """Undo results.csv's formula guard (a leading ' before = + - @) for display."""
    value = value or ""
    if value.startswith("'") and value[1:].startswith(FORMULA_PREFIXES):
        return value[1:]
    return value


def _float(value: str | None) -> float | None:
    try:
        x = float(_cell(value))
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def read_rows(out: Path) -> list[Row]:
    path = out / "results.csv"
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = []
        for i, r in enumerate(csv.DictReader(fh)):
            file = _cell(r.get("file"))
            rows.append(Row(seq=i, file=file, source=_cell(r.get("relpath")) or os.path.basename(file),
                            dest=_cell(r.get("dest")), sha256=_cell(r.get("sha256")),
                            decision=_cell(r.get("decision")), p=_float(r.get("p_malignant")),
                            threshold=_float(r.get("threshold")), backend=_cell(r.get("backend")),
                            artifact=_cell(r.get("artifact")), model_id=_cell(r.get("model_id")),
                            time=_cell(r.get("time")), reason=_cell(r.get("reason")), top_dx=_cell(r.get("top_dx")),
                            top_dx_p=_float(r.get("top_dx_p")), site_profile=_cell(r.get("site_profile")),
                            status=_cell(r.get("status")), signature=_cell(r.get("signature")),
                            gate_score=_float(r.get("gate_score"))))
    return rows


def _text(value: Any) -> str:
    """Untrusted text -> HTML text/attribute content (undecodable bytes shown as U+FFFD)."""
    s = str(value)
    s = s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(s, quote=True)


def _href(dest: str) -> str | None:
    """A percent-encoded link relative to OUT for a destination inside benign/ or review/; None otherwise."""
    parts = dest.split("/")
    if len(parts) < 2 or parts[0] not in ("benign", "review") or any(p in ("", ".", "..") for p in parts):
        return None
    return html.escape(quote(dest.encode("utf-8", "surrogateescape"), safe="/"), quote=True)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _find_bundle(model_id: str, bundle: Bundle | None, run: dict[str, Any]) -> tuple[Bundle | None, str]:
    """The bundle the rows were sorted with, or None and why not."""
    if bundle is not None and bundle.model_id == model_id:
        return bundle, ""
    tried = []
    for candidate in (run.get("bundle"), DEFAULT_BUNDLE):
        if not candidate:
            continue
        tried.append(str(candidate))
        try:
            found, _ = load_bundle(candidate)
        except (DermsortError, OSError):
            continue
        if found.model_id == model_id:
            return found, ""
    return None, (f"the model bundle this run used ({model_id}) was not found (looked in: {', '.join(tried)}); "
                  "its validated figures cannot be shown")


def _existing_thumbs(out: Path) -> set[str]:
    try:
        return set(os.listdir(out / THUMBS))  # one call, not a stat per image
    except OSError:
        return set()


def _ensure_thumbs(out: Path, rows: list[Row], spec: PreprocessSpec) -> set[str]:
    """Make thumbnails a sort did not (runs before the review page existed) from the placed files;
    returns the names of the thumbnails there are."""
    from .preprocess import UnreadableImage, open_image

    have = _existing_thumbs(out)
    made = False
    for row in rows:
        name = thumb_name(row.sha256)
        if name is None or row.p is None or name in have or _href(row.dest) is None:
            continue  # p is None: the file could not be decoded when it was sorted either
        try:
            with open(out / row.dest, "rb") as fh:
                img, _ = open_image(fh, spec, row.dest)
            save_thumbnail(img, out / THUMBS, row.sha256)
            made = True
        except (OSError, UnreadableImage) as exc:
            log.debug("no thumbnail for %s: %s", row.dest, exc)
    return _existing_thumbs(out) if made else have


def build_report(out_dir: str | os.PathLike, bundle: Bundle | None = None,
                 run: dict[str, Any] | None = None) -> Path:
    """Write ``OUT/report.html`` (atomically) from ``OUT/results.csv``; returns its path.

    ``run`` is what the caller knows beyond results.csv (``bundle`` path, ``threshold_overridden``,
    ``left_in_place``, ``ignored``); it is kept in ``OUT/.dermsort/report-run.json`` so that
    ``dermsort report OUT`` can rebuild the same page later. Raises DermsortError without results.csv.
    """
    out = Path(out_dir)
    if not (out / "results.csv").is_file():
        raise DermsortError(f"no results.csv in {out}: not a dermsort output folder (sort into it first)")
    info_path = out / RUN_INFO
    if run is not None:
        run = dict(run)
        if bundle is not None:
            run.setdefault("bundle", str(bundle.root))
        try:
            _write_atomic(info_path, json.dumps(run, indent=1, default=str).encode())
        except OSError as exc:
            log.warning("could not save %s: %s", info_path, exc)
    else:
        try:
            run = json.loads(info_path.read_text())
            if not isinstance(run, dict):
                run = {}
        except (OSError, ValueError):
            run = {}
    try:
        rows = read_rows(out)
    except (OSError, csv.Error) as exc:
        raise DermsortError(f"cannot read {out / 'results.csv'}: {exc}") from None
    if not run.get("threshold_overridden"):
        run["threshold_overridden"] = _journal_says_overridden(out)  # older runs: the journal records it
    model_id = rows[-1].model_id if rows else str(run.get("model_id", ""))
    found, missing = _find_bundle(model_id, bundle, run) if model_id else (bundle, "")
    thumbs = _ensure_thumbs(out, rows, found.metadata.preprocess if found else PreprocessSpec())
    page = render(out, rows, found, missing, run, thumbs)
    target = out / REPORT
    _write_atomic(target, page.encode("utf-8"))
    return target


def _journal_says_overridden(out: Path) -> bool:
    """Whether any placement in OUT's journal was decided at a --threshold override."""
    try:
        with open(out / ".dermsort" / "journal.jsonl", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if '"threshold_overridden": true' in line:
                    try:
                        if json.loads(line).get("threshold_overridden") is True:
                            return True
                    except ValueError:
                        continue
    except OSError:
        pass
    return False


def _write_atomic(target: Path, data: bytes) -> None:
    """Temp file + rename; nothing is written when the file already has these bytes (a re-run that
    sorted nothing new leaves OUT exactly as it was, time stamps included)."""
    try:
        if target.read_bytes() == data:
            return
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _fmt_ci(x: float | None, ci: Any) -> str:
    if x is None:
        return "n/a"
    text = f"{x:.1%}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        text += f" (95 % CI {ci[0]:.1%}\u2013{ci[1]:.1%})"
    return text


def reference_artifact(bundle: Bundle) -> Any:
    """The FP32 reference artifact (the one the metadata's validation figures were measured with), or None."""
    for a in bundle.artifacts:
        if a.parity.get("status") == "reference" or bundle.reference in (a.name, a.path):
            return a
    return None


def artifact_figures(bundle: Bundle, artifact_name: str) -> dict[str, Any]:
    """The validated figures that belong to one artifact at its own threshold: the reference's validation
    (with CIs) for the reference, the export's parity-gate measurement for a derived artifact (FP16, INT8...,
    recalibrated), never the reference's figures beside another artifact's threshold."""
    v = bundle.metadata.validation
    art = next((a for a in bundle.artifacts if a.name == artifact_name), None)
    empty = {"artifact": artifact_name, "threshold": None, "sensitivity": None, "sensitivity_ci": None,
             "specificity": None, "specificity_ci": None, "n_images": None, "n_malignant": None}
    if art is None:
        return {**empty, "source": "not an artifact of this bundle"}
    ref = reference_artifact(bundle)
    if ref is not None and art.name == ref.name:
        return {**empty, "threshold": art.threshold, "sensitivity": v.sensitivity, "sensitivity_ci": v.sensitivity_ci,
                "specificity": v.specificity, "specificity_ci": v.specificity_ci, "n_images": v.n_images,
                "n_malignant": v.n_malignant,
                "source": f"validation: {v.split or '?'} split of {', '.join(v.datasets) or '?'}"}
    par = art.parity or {}
    if par.get("sensitivity") is None:
        return {**empty, "threshold": art.threshold,
                "source": f"not measured for {art.name} (exported without labelled data); the reference's figures "
                          "do not apply at its threshold"}
    return {**empty, "threshold": art.threshold, "sensitivity": par.get("sensitivity"),
            "sensitivity_ci": par.get("sensitivity_ci"), "specificity": par.get("specificity"),
            "specificity_ci": par.get("specificity_ci"), "n_images": par.get("n_images"),
            "n_malignant": par.get("n_malignant"),
            "source": f"the export's parity gate: {art.name} at its own threshold on {par.get('n_images', '?')} "
                      f"images, where the reference had sensitivity {_pct(par.get('sensitivity_reference'))}, "
                      f"specificity {_pct(par.get('specificity_reference'))}"}


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "?"


def _model_block(rows: list[Row], bundle: Bundle | None, missing: str, run: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    used = sorted({(r.model_id, r.backend, r.artifact, r.threshold) for r in rows}, key=str)
    overridden_rows = []
    gate_overrides = []
    validated_thr: dict[str, float] = {}
    if bundle is not None:
        validated_thr = {a.name: a.threshold for a in bundle.artifacts}
        gate_overrides = [a for a in bundle.artifacts if a.override and any(u[2] == a.name for u in used)]
        overridden_rows = [r for r in rows if r.artifact in validated_thr and r.threshold is not None
                           and abs(r.threshold - validated_thr[r.artifact]) > 1e-9
                           and not _at_site_threshold(r, run)]
    if run.get("threshold_overridden") or overridden_rows:
        thr = sorted({f"{r.threshold:.4f}" for r in overridden_rows}) or [str(run.get("threshold", "?"))]
        parts.append(f'<div class="banner" id="override" role="alert">Threshold overridden: images were sorted at '
                     f'threshold {_text(", ".join(thr))} instead of the validated one. The validated sensitivity '
                     f'and specificity below do NOT apply to '
                     f'{_text(len(overridden_rows) or "these")} image(s).</div>')
    for a in gate_overrides:
        parts.append(f'<div class="banner" role="alert">Artifact {_text(a.name)} failed the export\'s parity gate '
                     f'and was kept by override: {_text(a.override)}</div>')
    if run.get("drift_line") and (run.get("drift") or {}).get("alarm"):
        parts.append(f'<div class="warn" id="drift" role="alert">{_text(run["drift_line"])}</div>')
    if missing:
        parts.append(f'<div class="warn" id="nobundle">{_text(missing)}</div>')
    facts = []
    if bundle is not None:
        meta, v = bundle.metadata, bundle.metadata.validation
        if meta.development_model:
            parts.append('<div class="warn">Development model: not validated for clinical use.</div>')
        facts.append(("Model", meta.model_id))
        # the figures of the artifact(s) that ran, at their own thresholds (not the FP32 reference's)
        ref = reference_artifact(bundle)
        ran = list(dict.fromkeys(u[2] for u in used)) or ([ref.name] if ref is not None else [])
        for name in ran:
            fig = artifact_figures(bundle, name)
            label = "" if len(ran) == 1 else f", {name}"
            n = (f": {fig['n_images']} images ({fig['n_malignant']} malignant)" if fig["n_images"] else "")
            facts += [(f"Validated on{label}", f"{fig['source']}{n}"),
                      (f"Sensitivity{label}", _fmt_ci(fig["sensitivity"], fig["sensitivity_ci"])),
                      (f"Specificity{label}", _fmt_ci(fig["specificity"], fig["specificity_ci"]))]
    else:
        facts.append(("Model", ", ".join(sorted({u[0] for u in used})) or "?"))
    for model_id, backend, artifact, thr in used:
        validated = validated_thr.get(artifact)
        text = f"{thr:.4f}" if thr is not None else "?"
        if validated is not None:
            same = thr is not None and abs(thr - validated) <= 1e-9
            text += " (the validated threshold of this artifact)" if same else f" (validated: {validated:.4f})"
        facts.append((f"Threshold, {backend}/{artifact}", text))
    site_rows = sorted({r.site_profile for r in rows if r.site_profile})
    if run.get("site_profile_line") or site_rows:
        facts.append(("Site profile", run.get("site_profile_line") or ", ".join(site_rows)))
    if run.get("drift_line"):
        facts.append(("Drift check", run["drift_line"]))
    signatures = sorted({r.signature for r in rows if r.signature}) or (
        [run["signature"]] if run.get("signature") else [])
    if signatures:
        facts.append(("Model bundle", ", ".join(signatures)))
    parts.append('<dl class="facts">' + "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in facts) + "</dl>")
    return parts


def _at_site_threshold(row: Row, run: dict[str, Any]) -> bool:
    """A row sorted at its site profile's threshold (runtime/site.py) is site-calibrated, not overridden."""
    profile = run.get("site_profile") or {}
    return (bool(row.site_profile) and not run.get("threshold_overridden") and row.site_profile == profile.get("label")
            and row.threshold is not None and abs(row.threshold - float(profile.get("threshold", -1))) <= 1e-9)


def _card(row: Row, folder: str, thumbs: set[str]) -> str:
    near = near_threshold(row.p, row.threshold) and not row.problem
    href = _href(row.dest)
    thumb = thumb_name(row.sha256)
    if thumb and thumb in thumbs:
        inner = f'<img src="{html.escape(quote((THUMBS / thumb).as_posix()))}" alt="" loading="lazy">'
    else:
        inner = '<span>no preview</span>'
    link = (f'<a class="thumb" href="{href}" title="open the full image">{inner}</a>' if href
            else f'<a class="thumb" tabindex="0">{inner}</a>')
    p = "" if row.p is None else f"{row.p:.4f}"
    tag = '<span class="tag">near threshold</span>' if near else ""
    lines = [f'<li class="card {_text(row.decision)}{" near" if near else ""}" data-folder="{folder}" '
             f'data-name="{_text(row.name.lower())}" data-p="{p}" data-near="{int(near)}" data-seq="{row.seq}">',
             link, f'<div class="p">{"p " + p if p else "no p(malignant)"}{tag}</div>',
             f'<div class="name">{_text(row.name)}</div>']
    if row.source and row.source != row.name:
        lines.append(f'<div class="from">from {_text(row.source)}</div>')
    lines.append(f'<div class="reason">{_text(row.reason)}</div>')
    if row.top_dx:
        dx_p = f" {row.top_dx_p:.2f}" if row.top_dx_p is not None else ""
        lines.append(f'<div class="dx">top diagnosis {_text(row.top_dx)}{dx_p} (for information)</div>')
    return "".join(lines) + "</li>"


def _grid(section_id: str, title: str, note: str, rows: list[Row], folder: str, thumbs: set[str]) -> str:
    body = "".join(_card(r, folder, thumbs) for r in rows)
    empty = '<p class="none">none</p>' if not rows else '<p class="none nomatch" hidden>none match the filter</p>'
    return (f'<section class="grid" id="{section_id}"><h2>{_text(title)} ({len(rows)})</h2>'
            f'<p class="hint">{_text(note)}</p><ul class="cards">{body}</ul>{empty}</section>')


def render(out: Path, rows: list[Row], bundle: Bundle | None, missing: str, run: dict[str, Any],
           thumbs: set[str]) -> str:
    counts = Counts.of_rows(r.as_counted() for r in rows)  # the terminal's and --json's definitions
    superseded = [r for r in rows if r.superseded]
    rows = [r for r in rows if not r.superseded]
    not_derm = [r for r in rows if r.not_dermoscopy]
    problems = [r for r in rows if r.problem and not r.not_dermoscopy]
    review = [r for r in rows if r.decision == "review" and not r.problem]
    benign = [r for r in rows if r.decision == "benign" and not r.problem]
    other = [r for r in rows if r.decision not in ("benign", "review") and not r.problem]
    left = [x for x in run.get("left_in_place", []) if isinstance(x, dict)]
    ignored = [x for x in run.get("ignored", []) if isinstance(x, dict)]
    csp = (f"default-src 'none'; img-src 'self' file: data:; style-src {_csp_hash(CSS)}; "
           f"script-src {_csp_hash(JS)}; base-uri 'none'; form-action 'none'")
    title = f"dermsort review \u2013 {out.resolve().name}"
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_text(title)}</title>",
             f"<style>{CSS}</style></head><body><header>", f"<h1>{_text(title)}</h1>"]
    parts += _model_block(rows, bundle, missing, run)
    shown = [("sorted", counts.sorted, "n-sorted"), ("images", counts.images, "n-images"),
             ("benign", counts.benign, "n-benign"), ("review", counts.review, "n-review"),
             ("not an image (in review/)", counts.not_images, "n-not-images"),
             ("input problems", counts.input_problems, "n-problems"),
             ("not recognised as dermoscopy", counts.not_dermoscopy, "n-not-dermoscopy"),
             ("near threshold", counts.near_threshold, "n-near"), ("left in place", len(left), "n-left")]
    if counts.superseded:
        shown.append(("superseded (sorted again)", counts.superseded, "n-superseded"))
    parts.append('<ul class="counts">' + "".join(f'<li id="{i}"><b>{n}</b> {_text(k)}</li>' for k, n, i in shown)
                 + f'<li id="work-reduction"><b>{counts.work_reduction:.1%}</b> work reduction '
                   '(benign share of the images)</li></ul>')
    parts.append("</header>")
    parts.append('<div class="controls" role="search"><input type="search" id="q" placeholder="search file name  ( / )"'
                 ' aria-label="search by file name" autocomplete="off">'
                 '<label>show <select id="folder" aria-label="filter by folder"><option value="all">all</option>'
                 '<option value="review">review/</option><option value="benign">benign/</option>'
                 '<option value="problems">input problems</option><option value="near">near threshold</option>'
                 '</select></label><label>order <select id="order" aria-label="sort order">'
                 '<option value="p-desc">p(malignant), highest first</option>'
                 '<option value="p-asc">p(malignant), lowest first</option><option value="name">file name</option>'
                 '<option value="seq">as sorted</option></select></label><output id="shown"></output>'
                 '<span class="hint">keys: / search, Esc clear, j/k next/previous image, Enter open</span></div>')
    parts.append("<main>")
    parts.append(_grid("not-dermoscopy", "Not recognised as dermoscopy (in review/)", "The model's gate did not "
                       "recognise these as dermoscopy images of a skin lesion (clinical or everyday photos, screenshots, "
                       "documents...): the model was not trained to judge them, whatever p(malignant) says. Check each "
                       "by hand; a dermoscopy image here costs work, never safety.", not_derm, "problems", thumbs))
    parts.append(_grid("problems", "Other input problems (in review/)", "Could not be judged by the model: corrupt, too "
                       "small, not an image, unexpected colour mode... Always check these by hand.", problems,
                       "problems", thumbs))
    if left or ignored:
        body = "".join(f"<tr><td>{_text(x.get('file', ''))}</td><td>{_text(x.get('reason', ''))}</td></tr>"
                       for x in left + ignored)
        parts.append(f'<section id="left"><h2>Left in place, not sorted ({len(left)}) and ignored ({len(ignored)})'
                     f'</h2><table class="left"><tr><th>file</th><th>reason</th></tr>{body}</table></section>')
    if superseded:
        body = "".join(f"<tr><td>{_text(r.source)}</td><td>{_text(r.dest)}</td><td>{_text(r.status)}</td></tr>"
                       for r in superseded)
        parts.append(f'<section id="superseded"><h2>Superseded ({len(superseded)})</h2><p class="hint">Copies of an '
                     'input that changed afterwards (e.g. still being written) and was sorted again: the later copy '
                     'counts, these are not counted above.</p><table class="left"><tr><th>file</th><th>copy in OUT'
                     f'</th><th>status</th></tr>{body}</table></section>')
    parts.append(_grid("review", "review/", "p(malignant) at or above the threshold: look at these.",
                       review + other, "review", thumbs))
    parts.append(_grid("benign", "benign/", "p(malignant) below the threshold. Highlighted: close to the threshold "
                       "(odds within x1.65).", benign, "benign", thumbs))
    last = max((r.time for r in rows), default="")
    parts.append(f"</main><footer>Built from results.csv by dermsort{'; last image sorted ' + _text(last) if last else ''}"
                 ". A triage aid, not a diagnosis.</footer>")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts)


class ReportRefresher:
    """Rebuilds the page at most every ``min_interval`` seconds (``dermsort watch`` after each batch)."""

    def __init__(self, out: Path, bundle: Bundle | None, min_interval: float = 5.0):
        self.out, self.bundle, self.min_interval = out, bundle, min_interval
        self._last = -math.inf

    def refresh(self, run: dict[str, Any], force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return False
        self._last = now
        return write_report_safely(self.out, self.bundle, run) is not None


def write_report_checked(out: Path, bundle: Bundle | None, run: dict[str, Any]) -> tuple[Path | None, str]:
    """build_report for the sort/watch commands: (the page, "") or (None, why it was not updated); never raises."""
    try:
        return build_report(out, bundle, run), ""
    except Exception as exc:  # noqa: BLE001 - the images are sorted; the page is a convenience
        why = getattr(exc, "strerror", None) or str(exc)
        return None, f"the review page {Path(out) / REPORT} was not updated ({why}); it may be stale"


def write_report_safely(out: Path, bundle: Bundle | None, run: dict[str, Any]) -> Path | None:
    """build_report for the sort/watch commands: a failure is one warning line, never a failed sort."""
    page, why = write_report_checked(out, bundle, run)
    if why:
        log.warning("%s", why)
    return page
