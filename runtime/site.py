"""The site check: measure the model on a clinic's own labelled cases, and an opt-in site calibration.

``dermsort validate`` decides every labelled image exactly as ``sort`` would (``Sorter.classify``: the
same reading, input checks, artifact and rule) and reports, at the bundle's threshold, sensitivity with
its Wilson interval, specificity, work reduction and sensitivity per diagnosis; whether the validated
claim holds here (the interval reaches the target); and the threshold this site would need. Every figure
comes from ``runtime/metrics.py``, the package's one implementation.

``--write-site-profile`` keeps that threshold in a small JSON file with a sha256 over its content (a hand
edit is detected), bound to the model and to the artifact it was measured on. ``sort``/``watch`` use it
only when given one (``--site-profile FILE``, or the default location ``default_profile_path()``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .counts import NOT_DERMOSCOPY
from . import labels
from .errors import DermsortError
from .labels import LABELS_NAME
from .metrics import (DIAGNOSIS_GROUPS, cases_needed, choose_threshold, confusion, diagnosis_sensitivity,
                      quantile_summary, wilson_ci)
from .scan import Candidate
from .sorter import SortOptions, Sorter

PROFILE_FORMAT = "dermsort-site-profile"
PROFILE_VERSION = 1
PROFILE_NAME = "site-profile.json"
#: the reason a sort gives an image the out-of-distribution gate rejects (counted by this prefix)
OOD_REASON = NOT_DERMOSCOPY  # the gate's reason (runtime/sorter.py decide)
#: a site threshold is offered only when the site's malignant cases could support a lower 95 % bound of
#: this sensitivity (all caught); with fewer, validate says how many more it needs instead
MIN_LOWER_BOUND = 0.90
#: quantile levels of the p(malignant) summary kept for the drift check (runtime/drift.py)
P_LEVELS = [round(0.05 * i, 2) for i in range(1, 20)]


def default_profile_path() -> Path:
    """``$XDG_CONFIG_HOME/dermsort/site-profile.json`` (``~/.config/dermsort/site-profile.json``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dermsort" / PROFILE_NAME


# --------------------------------------------------------------------------- labelled cases

@dataclass
class Case:
    path: Path
    malignant: int
    dx: str


def read_labels(folder: Path, split: str | None = None) -> list[Case]:
    """The labelled cases in ``folder/labels.csv`` (``file``, ``malignant``; optional ``dx``, ``split``)."""
    path = folder / LABELS_NAME
    if not path.is_file():
        raise DermsortError(f"no labels.csv in {folder}: validate needs a labelled folder (columns file, malignant)")
    rows = labels.read_labels(path, None)
    if split is not None:
        if rows and "split" not in rows[0].fields:
            raise DermsortError(f"--split {split}: {path} has no split column")
        rows = [r for r in rows if r.split == labels.parse_split(split)]
    # the folder as given (not resolved): the results name the files the way the user wrote the folder
    cases = [Case(folder / r.file, int(r.malignant), r.fields.get("dx", "").lower()) for r in rows]
    if not cases:
        raise DermsortError(f"no labelled cases in {path}" + (f" for split {split}" if split else ""))
    return cases


def score_cases(bundle: Bundle, engine: Any, cases: list[Case], scratch: Path, batch_size: int = 4,
                workers: int | None = None, progress: Any = None) -> list[dict[str, Any]]:
    """Each case decided as a sort would decide it; one dict per case (``p_malignant`` None: not scored)."""
    folder = Path(os.path.commonpath([str(c.path.parent.resolve()) for c in cases]))
    sorter = Sorter(folder, SortOptions(out=scratch, dry_run=True, batch_size=batch_size, workers=workers), engine)
    found, results = [], {}
    for case in cases:
        try:
            st = os.stat(case.path)
            found.append(Candidate(case.path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
        except OSError as exc:
            results[str(case.path)] = {"decision": "", "reason": f"missing: {exc.strerror or exc}", "p_malignant": None}
    for d, rec in sorter.classify(found):
        results[str(d.cand.path)] = {"decision": rec.decision, "reason": rec.reason, "p_malignant": rec.p_malignant}
        if progress:
            progress(1)
    out = []
    for case in cases:
        rec = results.get(str(case.path), {"decision": "", "reason": "not read", "p_malignant": None})
        out.append({"file": str(case.path), "malignant": case.malignant, "dx": case.dx,
                    "decision": rec.get("decision", ""), "reason": rec.get("reason", ""),
                    "p_malignant": rec.get("p_malignant")})
    return out


# --------------------------------------------------------------------------- the figures

def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" (95 % CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f} %)"


def few_cases_text(n_malignant: int, lower_bound: float = MIN_LOWER_BOUND) -> str:
    need = cases_needed(lower_bound)
    return (f"too few malignant cases ({n_malignant}) for a confident site threshold: a lower 95 % bound of "
            f"{100 * lower_bound:.0f} % needs >= {need} malignant cases at 100 % sensitivity "
            f"({need - n_malignant} more)")


def _at(y: np.ndarray, p: np.ndarray, dx: np.ndarray, threshold: float) -> dict[str, Any]:
    cm = confusion(y, p, threshold)
    n_pos, n_neg = cm["tp"] + cm["fn"], cm["tn"] + cm["fp"]
    n = n_pos + n_neg
    return {"threshold": float(threshold), "n_images": n, "n_malignant": n_pos,
            "sensitivity": cm["tp"] / n_pos if n_pos else None, "sensitivity_ci": wilson_ci(cm["tp"], n_pos),
            "specificity": cm["tn"] / n_neg if n_neg else None, "specificity_ci": wilson_ci(cm["tn"], n_neg),
            "work_reduction": (cm["tn"] + cm["fn"]) / n if n else None, "missed_malignant": cm["fn"],
            "confusion": cm, "per_diagnosis": diagnosis_sensitivity(dx, p, threshold)}


def validation_report(bundle: Bundle, engine: Any, scored: list[dict[str, Any]], target: float,
                      data: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the site check from the decided cases (see ``score_cases``)."""
    if not 0.0 < target < 1.0:
        raise DermsortError(f"--target-sensitivity must be in (0, 1), got {target}")
    art = engine.artifact
    validated = float(art.threshold)
    used = [s for s in scored if s["p_malignant"] is not None]
    excluded = [{"file": s["file"], "reason": s["reason"]} for s in scored if s["p_malignant"] is None]
    y = np.asarray([s["malignant"] for s in used], dtype=int)
    p_raw = np.asarray([s["p_malignant"] for s in used], dtype=float)
    # an image the sort sends to review whatever its p (an input concern, the out-of-distribution gate)
    # counts as review at every threshold
    forced = np.asarray([not str(s["reason"]).startswith("p_malignant ") for s in used], dtype=bool)
    p = np.where(forced, np.inf, p_raw)
    dx = np.asarray([s["dx"] for s in used], dtype=object)
    ood = sum(str(s["reason"]).startswith(OOD_REASON) for s in used)
    at_validated = _at(y, p, dx, validated) if len(used) else None
    n_mal = int(y.sum())
    messages: list[str] = []
    claim: dict[str, Any] = {"target": target, "holds": None}
    if excluded:
        messages.append(f"{len(excluded)} image(s) could not be decoded and were excluded (listed in validation.json)")
    if at_validated is None or not n_mal:
        messages.append("no malignant case was scored: sensitivity cannot be measured here")
    else:
        sens, ci = at_validated["sensitivity"], at_validated["sensitivity_ci"]
        claim["holds"] = bool(ci[1] >= target)
        claim["confirmed"] = bool(ci[0] >= target)
        if claim["confirmed"]:
            text = (f"the validated claim holds here: sensitivity {_pct(sens)}{_ci(ci)} at threshold {validated:.4f} "
                    f"is at least the target {_pct(target)} on {n_mal} malignant case(s)")
        elif claim["holds"]:
            text = (f"consistent with the validated claim: sensitivity {_pct(sens)}{_ci(ci)} at threshold "
                    f"{validated:.4f}; the interval reaches the target {_pct(target)}")
        else:
            text = (f"SHORTFALL: sensitivity {_pct(sens)}{_ci(ci)} at threshold {validated:.4f} is below the target "
                    f"{_pct(target)}: the validated claim does not hold at this site ({at_validated['missed_malignant']} "
                    f"of {n_mal} malignant case(s) would go to benign/)")
        claim["text"] = text
        messages.append(text)
    site: dict[str, Any] = {"threshold": None, "confident": False, "cases_needed": cases_needed(MIN_LOWER_BOUND),
                            "min_lower_bound": MIN_LOWER_BOUND}
    if n_mal:
        site_thr = min(1.0, choose_threshold(y, p, target))
        # a site threshold that decides every case here as the validated one does is the validated one (the
        # site the threshold was bound on gives it back up to the rounding of p), not a change of 1e-8
        low, high = sorted((site_thr, validated))
        if not np.any((p >= low) & (p < high)):
            site_thr = validated
        fig = _at(y, p, dx, site_thr)
        site.update({"needed_threshold": site_thr, **{k: fig[k] for k in ("sensitivity", "sensitivity_ci",
                     "specificity", "specificity_ci", "work_reduction", "per_diagnosis", "n_malignant")}})
        if n_mal < site["cases_needed"]:
            site["text"] = few_cases_text(n_mal)
        else:
            site.update({"threshold": site_thr, "confident": True})
            direction = ("lower than the validated threshold (more images to review)" if site_thr < validated else
                         "ABOVE the validated threshold (fewer images to review; sort needs an explicit override "
                         "to use it)" if site_thr > validated else "the validated threshold")
            site["direction"] = "lower" if site_thr < validated else "higher" if site_thr > validated else "same"
            site["text"] = (f"this site needs threshold {site_thr:.4f} for sensitivity >= {_pct(target)}: "
                            f"{direction}; there it catches {_pct(fig['sensitivity'])}{_ci(fig['sensitivity_ci'])} "
                            f"of {n_mal} malignant case(s), specificity {_pct(fig['specificity'])}, work reduction "
                            f"{_pct(fig['work_reduction'])}")
        messages.append(site["text"])
    # what sort/watch compare a run with (runtime/drift.py): the benign share at each threshold and the
    # distribution of p(malignant) of the images the model judged
    scored_p = p_raw[~forced]
    reference = {"n_images": len(used), "p_levels": P_LEVELS, "p_quantiles": quantile_summary(scored_p, P_LEVELS),
                 "n_p": int(len(scored_p)), "ood_rate": ood / len(used) if used else None,
                 "benign_share_validated": at_validated["work_reduction"] if at_validated else None,
                 "benign_share_site": (float(np.mean(p < site["threshold"])) if site["threshold"] is not None
                                       and len(used) else None)}
    return {"format": "dermsort-validation", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model_id": bundle.model_id, "bundle": str(bundle.root),
            "artifact": {"name": art.name, "backend": art.backend, "precision": art.precision, "sha256": art.sha256},
            "backend": engine.describe(), "validated_threshold": validated, "target_sensitivity": target,
            "bundle_validation": {"sensitivity": bundle.metadata.validation.sensitivity,
                                  "sensitivity_ci": bundle.metadata.validation.sensitivity_ci,
                                  "split": bundle.metadata.validation.split,
                                  "datasets": bundle.metadata.validation.datasets},
            "data": {**data, "n_cases": len(scored), "n_scored": len(used), "n_malignant": n_mal,
                     "n_benign": len(used) - n_mal, "n_excluded": len(excluded), "n_ood_rejected": ood,
                     "n_forced_review": int(forced.sum()),
                     "diagnoses": {name: int(np.isin(dx, codes).sum()) for name, codes in DIAGNOSIS_GROUPS.items()}},
            "excluded": excluded, "at_validated_threshold": at_validated, "claim": claim, "site_threshold": site,
            "reference": reference, "messages": messages,
            "cases": [{k: c[k] for k in ("file", "malignant", "dx", "p_malignant", "decision", "reason")} for c in scored]}


def format_report(report: dict[str, Any]) -> list[str]:
    """The terminal lines of a validation report."""
    d, a = report["data"], report["at_validated_threshold"]
    lines = [f"model {report['model_id']} on {report['backend'].get('backend')}/{report['artifact']['name']}, "
             f"validated threshold {report['validated_threshold']:.4f}",
             f"cases {d['n_cases']} from {d.get('folder')}{' split ' + d['split'] if d.get('split') else ''}: "
             f"{d['n_scored']} scored ({d['n_malignant']} malignant), {d['n_excluded']} excluded (could not be decoded)"]
    if a:
        lines.append(f"at the validated threshold: sensitivity {_pct(a['sensitivity'])}{_ci(a['sensitivity_ci'])}, "
                     f"specificity {_pct(a['specificity'])}{_ci(a['specificity_ci'])}, work reduction "
                     f"{_pct(a['work_reduction'])}")
        per = [f"{name} {_pct(v['sensitivity'])}{_ci(v['sensitivity_ci'])} n={v['n']}"
               for name, v in a["per_diagnosis"].items() if v["n"]]
        if per:
            lines.append("sensitivity per diagnosis: " + "; ".join(per))
    lines += report["messages"]
    return lines


# --------------------------------------------------------------------------- the site profile

def _digest(data: dict[str, Any]) -> str:
    covered = {k: v for k, v in data.items() if k != "integrity"}
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def make_profile(report: dict[str, Any]) -> dict[str, Any]:
    """The site profile of a validation report; raises DermsortError when it offers no confident threshold."""
    site = report["site_threshold"]
    if site.get("threshold") is None:
        raise DermsortError("no site profile written: " + (site.get("text") or "no malignant case was scored"))
    data = report["data"]
    profile = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "created": report["created"],
               "model_id": report["model_id"], "artifact": report["artifact"],
               "threshold": site["threshold"], "validated_threshold": report["validated_threshold"],
               "target_sensitivity": report["target_sensitivity"],
               "cases": {"folder": data.get("folder"), "split": data.get("split"), "n": data["n_scored"],
                         "n_malignant": data["n_malignant"], "n_excluded": data["n_excluded"],
                         "sensitivity": site["sensitivity"], "sensitivity_ci": site["sensitivity_ci"],
                         "specificity": site["specificity"], "work_reduction": site["work_reduction"]},
               "reference": report["reference"]}
    profile["integrity"] = {"sha256": _digest(profile), "covers": "everything in this file but this record"}
    return profile


def write_profile(profile: dict[str, Any], target: Path) -> Path:
    target = Path(target).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(profile, indent=1) + "\n")
        os.replace(tmp, target)
    except OSError as exc:
        raise DermsortError(f"cannot write site profile {target}: {exc.strerror or exc}") from None
    return target


@dataclass
class SiteProfile:
    path: Path
    data: dict[str, Any]

    @property
    def threshold(self) -> float:
        return float(self.data["threshold"])

    @property
    def artifact(self) -> str:
        return str(self.data["artifact"]["name"])

    @property
    def label(self) -> str:
        """What every results.csv row says: the file's name and the first 12 digits of its digest."""
        return f"{self.path.name}@{self.data['integrity']['sha256'][:12]}"

    def summary(self) -> dict[str, Any]:
        c = self.data["cases"]
        return {"path": str(self.path), "label": self.label, "threshold": self.threshold,
                "validated_threshold": self.data["validated_threshold"], "model_id": self.data["model_id"],
                "artifact": self.artifact, "created": self.data["created"],
                "target_sensitivity": self.data["target_sensitivity"], "cases": c}

    def line(self) -> str:
        c = self.data["cases"]
        return (f"site profile {self.label}: threshold {self.threshold:.4f} (validated "
                f"{float(self.data['validated_threshold']):.4f}) from {c['n']} site cases ({c['n_malignant']} "
                f"malignant; sensitivity {_pct(c['sensitivity'])}{_ci(c['sensitivity_ci'])}), measured "
                f"{self.data['created'][:10]} on {self.artifact}")


def read_profile(path: Path) -> SiteProfile:
    """Read and integrity-check a site profile (not yet matched to a model: see ``check_profile``)."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DermsortError(f"site profile not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DermsortError(f"cannot read site profile {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise DermsortError(f"{path} is not a dermsort site profile")
    if data.get("version") != PROFILE_VERSION:
        raise DermsortError(f"site profile {path} has version {data.get('version')}; this dermsort reads "
                            f"{PROFILE_VERSION}")
    recorded = data.get("integrity", {}).get("sha256") if isinstance(data.get("integrity"), dict) else None
    if not recorded or recorded != _digest(data):
        raise DermsortError(f"site profile {path} was modified after `dermsort validate` wrote it (its digest does not "
                            "match its content); refusing it: write it again with `dermsort validate "
                            "--write-site-profile`")
    try:
        threshold = float(data["threshold"])
        data["artifact"]["name"], data["cases"]["n"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DermsortError(f"site profile {path} is malformed: {exc}") from None
    if not (0.0 < threshold <= 1.0 and math.isfinite(threshold)):
        raise DermsortError(f"site profile {path} has threshold {threshold} outside (0, 1]")
    return SiteProfile(path, data)


def check_profile(profile: SiteProfile, bundle: Bundle, artifact: Any | None = None) -> None:
    """Refuse a profile measured on another model or another artifact (one line)."""
    if profile.data.get("model_id") != bundle.model_id:
        raise DermsortError(f"site profile {profile.path} was measured on model {profile.data.get('model_id')}, not on "
                            f"{bundle.model_id} (the model in use); validate this model at the site again "
                            "(dermsort validate --write-site-profile)")
    if artifact is None:
        return
    want = profile.data["artifact"]
    if want.get("name") != artifact.name or want.get("sha256") != artifact.sha256:
        raise DermsortError(f"site profile {profile.path} was measured on artifact {want.get('name')}, but this run uses "
                            f"{artifact.name}; sort with the same artifact (e.g. --backend {want.get('backend')} "
                            f"--precision {want.get('precision')}) or validate this one")


def find_profile(explicit: Path | None, disabled: bool = False) -> SiteProfile | None:
    """The profile a run uses: ``--site-profile FILE``, else the default location if a file is there."""
    if disabled:
        return None
    if explicit is not None:
        return read_profile(explicit)
    default = default_profile_path()
    return read_profile(default) if default.is_file() else None


def raised_threshold_error(profile: SiteProfile, validated: float) -> str:
    return (f"site profile {profile.path} raises the threshold from the validated {validated:.4f} to "
            f"{profile.threshold:.4f} (more images to benign/): that needs the same explicit override as a raised "
            f"--threshold; re-run with --threshold {profile.threshold:.6g} to use it anyway (a warning is printed and "
            "every row is marked threshold_overridden)")
