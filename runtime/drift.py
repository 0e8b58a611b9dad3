"""Drift after deployment: does what a sort or watch run saw look like what validation saw?

Three figures per run, each against its reference: the share sent to benign/ (outside the exact 99 %
binomial band the reference share predicts for that many images), the distribution of p(malignant)
(Kolmogorov-Smirnov distance at the reference's stored quantiles, alpha 0.01), and the share rejected by
the out-of-distribution gate (reason prefix ``site.OOD_REASON``). A departure must also be large to count
as clear (``MIN_SHARE_SHIFT``, ``MIN_KS``): images come in patients, not one by one, so two samples of one
population differ "significantly" but modestly - ISIC 2020's patient-grouped val and test splits at
model v3's threshold: 35.8 % vs 27.6 % to benign/, KS 0.15, no alarm (docs/SITE_CHECK.md). The reference is the
site profile's validation when one is in use, else what the bundle's metadata gives (its validated work
reduction). Runs under ``MIN_IMAGES`` images never raise an alarm. Each run is kept in a small local
history (``OUT/.dermsort/runs.jsonl`` and ``$XDG_STATE_HOME/dermsort/runs.jsonl``); nothing leaves the machine.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable

from .metrics import binomial_band, ks_critical, ks_distance_at
from .site import OOD_REASON, SiteProfile

log = logging.getLogger(__name__)

#: fewer images than this never raise an alarm (too few to tell drift from chance)
MIN_IMAGES = 30
BAND_CONFIDENCE = 0.99
KS_ALPHA = 0.01
#: the OOD share is compared with at least this rate (validation on dermoscopy images rarely has any)
OOD_FLOOR = 0.01
#: a clear departure is significant AND at least this far from the prediction (share of images) ...
MIN_SHARE_SHIFT = 0.10
#: ... or this far apart in distribution (Kolmogorov-Smirnov distance)
MIN_KS = 0.25
HISTORY = "runs.jsonl"
HISTORY_KEEP = 200


def state_dir() -> Path:
    """Per-user state: ``$XDG_STATE_HOME/dermsort`` (``~/.local/state/dermsort``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dermsort"


def reference_for(bundle: Any, threshold: float, validated: float, profile: SiteProfile | None) -> dict[str, Any]:
    """What this run is compared with: the site profile's validation, else the bundle's validated figures."""
    if profile is not None:
        ref = profile.data.get("reference", {})
        share = (ref.get("benign_share_site") if abs(threshold - profile.threshold) < 1e-12 else
                 ref.get("benign_share_validated") if abs(threshold - validated) < 1e-12 else None)
        return {"source": f"site profile {profile.label}", "benign_share": share, "n": ref.get("n_images"),
                "p_levels": ref.get("p_levels") or [], "p_quantiles": ref.get("p_quantiles") or [],
                "n_p": ref.get("n_p") or 0, "ood_rate": ref.get("ood_rate") or 0.0}
    v = bundle.metadata.validation
    share = v.work_reduction if abs(threshold - validated) < 1e-12 else None
    # the gate's rejection rate on the dermoscopy val images it was chosen on
    gate_val = ((bundle.metadata.gate.validated.get("val") or {}).get("dermoscopy") or {}).get("pooled") or {}
    return {"source": f"the model's validation ({v.split or '?'} split of {', '.join(v.datasets) or '?'})",
            "benign_share": share, "n": v.n_images, "p_levels": [], "p_quantiles": [], "n_p": 0,
            "ood_rate": float(gate_val.get("rejected_rate") or 0.0)}


def assess(decisions: Iterable[dict[str, Any]], reference: dict[str, Any], min_images: int = MIN_IMAGES
           ) -> dict[str, Any]:
    """Compare a run's decisions (dicts with decision, p_malignant, reason) with ``reference``."""
    rows = [d for d in decisions if d.get("p_malignant") is not None
            or str(d.get("reason", "")).startswith(OOD_REASON)]
    n = len(rows)
    benign = sum(d.get("decision") == "benign" for d in rows)
    ood = sum(str(d.get("reason", "")).startswith(OOD_REASON) for d in rows)
    scored_p = [float(d["p_malignant"]) for d in rows if d.get("p_malignant") is not None
                and str(d.get("reason", "")).startswith("p_malignant ")]
    result: dict[str, Any] = {"n_images": n, "benign": benign, "benign_share": benign / n if n else None,
                              "ood_rejected": ood, "ood_share": ood / n if n else None,
                              "reference": reference.get("source"), "checked": n >= min_images,
                              "min_images": min_images, "departures": []}
    share = reference.get("benign_share")
    if share is not None and n:
        low, high = binomial_band(share, n, BAND_CONFIDENCE)
        result["benign_expected"] = share
        result["benign_band"] = [low, high]
        if n >= min_images and not low <= benign <= high and abs(benign / n - share) >= MIN_SHARE_SHIFT:
            result["departures"].append(
                f"{benign} of {n} sent to benign/ ({benign / n:.0%}); validation predicts {low}-{high} "
                f"({share:.0%})")
    levels, quantiles = reference.get("p_levels") or [], reference.get("p_quantiles") or []
    if quantiles and len(scored_p):
        dist = ks_distance_at(scored_p, quantiles, levels)
        crit = ks_critical(len(scored_p), max(int(reference.get("n_p") or 0), 1), KS_ALPHA)
        result["p_ks"], result["p_ks_critical"] = round(dist, 4), round(crit, 4)
        median_at = levels.index(0.5) if 0.5 in levels else len(levels) // 2
        result["p_median_reference"] = quantiles[median_at]
        result["p_median"] = float(sorted(scored_p)[len(scored_p) // 2])
        if len(scored_p) >= min_images and dist > crit and dist >= MIN_KS:
            result["departures"].append(
                f"p(malignant) distribution differs (median {result['p_median']:.3f} vs {result['p_median_reference']:.3f}"
                f" at validation; KS {dist:.2f} > {crit:.2f})")
    if n:
        rate = max(float(reference.get("ood_rate") or 0.0), OOD_FLOOR)
        high = binomial_band(rate, n, BAND_CONFIDENCE)[1]
        result["ood_band_high"] = high
        if n >= min_images and ood > high:
            result["departures"].append(f"{ood} of {n} not recognised as dermoscopy ({ood / n:.0%}; validation "
                                        f"predicts at most {high})")
    result["alarm"] = bool(result["departures"])
    return result


def line(result: dict[str, Any]) -> str:
    """One line for the summary and the review page."""
    if result.get("alarm"):
        return ("DRIFT: this run departs clearly from validation: " + "; ".join(result["departures"])
                + f" (reference: {result['reference']})")
    n = result.get("n_images", 0)
    if not result.get("checked"):
        return f"drift check: {n} image(s), too few to compare with validation (needs >= {result.get('min_images')})"
    parts = [f"{result['benign']} of {n} to benign/"]
    if "benign_band" in result:
        parts[0] += f" (validation predicts {result['benign_band'][0]}-{result['benign_band'][1]})"
    if "p_ks" in result:
        parts.append(f"p(malignant) KS distance {result['p_ks']:.2f}")
    parts.append(f"{result['ood_rejected']} not dermoscopy")
    return f"drift check: in line with validation: {', '.join(parts)} (reference: {result['reference']})"


def record(result: dict[str, Any], out: Path | None, context: dict[str, Any]) -> None:
    """Append this run's figures to the local histories (the output's and the user's); never fails a run."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **context,
             **{k: result.get(k) for k in ("n_images", "benign", "benign_share", "benign_expected", "benign_band",
                                           "p_ks", "p_ks_critical", "p_median", "ood_rejected", "ood_share",
                                           "alarm", "departures", "reference")}}
    text = json.dumps(entry, default=str)
    for folder in ([out / ".dermsort"] if out is not None else []) + [state_dir()]:
        path = folder / HISTORY
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
            lines = (lines + [text])[-HISTORY_KEEP:]
            tmp = path.with_name(f".{HISTORY}.{os.getpid()}.tmp")
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not record the run in %s: %s", path, exc)


def recent(limit: int = 10) -> list[dict[str, Any]]:
    """The last runs recorded for this user (newest last)."""
    path = state_dir() / HISTORY
    out = []
    try:
        for raw in path.read_text(encoding="utf-8").splitlines()[-limit:]:
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
    except OSError:
        pass
    return out
