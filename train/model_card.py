"""docs/MODEL_CARD.md generated from a bundle's own metadata and ``dermsort evaluate`` outputs.

No figure in the card is typed by hand: every number comes from the bundle manifest (metadata,
provenance, threshold basis) or from the metrics.json that ``dermsort evaluate`` wrote, and the card
prints the exact commands that reproduce each table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import click

#: what a reader must know about the populations behind the public sets (from their own papers/READMEs)
_SEEN = [
    "HAM10000: dermoscopy from Vienna (Austria) and Queensland (Australia), 2000s-2010s; mostly fair skin; "
    "histopathology for most malignant lesions.",
    "ISIC 2019 (non-HAM): ISIC Archive / ISIC 2017-era images, Memorial Sloan Kettering (US) and a few "
    "BCN20000 (Barcelona); other cameras, sites and years; mostly 256x256 square-resized copies.",
    "ISIC 2020: a screening population (~2 % melanoma; patient-grouped), 512x512 resized crops.",
    "PH2 (Porto, Portugal: one dermatoscope), a Kaggle ISIC-derived benign/malignant sample.",
]
_NOT_SEEN = [
    "Darker skin types (Fitzpatrick V-VI) are barely represented in any of these sets: figures may not carry over.",
    "Other dermatoscopes and resolutions than those above. Clinical (non-dermoscopic) photographs and other "
    "non-dermoscopy images are not judged: the not-dermoscopy gate sends them to review/ (figures below).",
    "Children; acral, nail, mucosal and scalp lesions are rare or absent; amelanotic melanoma is rare.",
    "SCC is represented mainly through HAM's akiec class (AK / Bowen's disease) and a handful of ISIC 2019 "
    "images: its sensitivity figure rests on few images.",
    "Merkel cell carcinoma, lymphoma, Kaposi sarcoma and other rare malignancies: never seen.",
]


def _normalisation(pre: dict[str, Any]) -> str:
    mean, std, scale = list(pre["mean"]), list(pre["std"]), float(pre["scale"])
    pixels = "0-255 pixel values" if scale == 1 else f"pixel values / {scale:g}"
    if len(set(mean)) == 1 and len(set(std)) == 1:
        return f"(x - {mean[0]:g}) / {std[0]:g} on {pixels}, every channel alike"
    return (f"(x - mean) / std per channel on {pixels}, mean [{', '.join(f'{m:g}' for m in mean)}], "
            f"std [{', '.join(f'{v:g}' for v in std)}]")


def preprocessing_line(pre: dict[str, Any]) -> str:
    """The card's preprocessing line, from the bundle's metadata (the numbers runtime/preprocess.py applies)."""
    return (f"- Preprocessing (the bundle's metadata; `dermsort.runtime.preprocess` applies it in training and at "
            f"run time): {pre['color']}, shrunk by a power of two while decoding (JPEG) or right after (other "
            f"formats), shorter side resized to {pre['resize_shorter']} px ({pre['interpolation']}), centre crop "
            f"{pre['input_size']} px, "
            + (f"Shades of Gray colour constancy (Minkowski p = {pre.get('color_constancy_power', 6):g}: each channel "
               "scaled so the image's p-norm mean is grey), " if pre.get("color_constancy") == "shades_of_gray" else "")
            + f"then {_normalisation(pre)}; layout {pre['layout']}.")


def _pct(value: float | None, ci: Sequence[float] | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * value:.1f} %"
    return text + (f" [{100 * ci[0]:.1f} - {100 * ci[1]:.1f}]" if ci else "")


def _auc(report: dict[str, Any]) -> str:
    if report.get("auc") is None:
        return "n/a"
    ci = report.get("auc_ci")
    return f"{report['auc']:.3f}" + (f" [{ci[0]:.3f} - {ci[1]:.3f}]" if ci else "")


def _dx(report: dict[str, Any]) -> str:
    parts = []
    for name, figures in (report.get("per_diagnosis") or {}).items():
        if figures["n"]:
            parts.append(f"{name} {_pct(figures['sensitivity'])} ({figures['n'] - figures['missed']}/{figures['n']})")
    return "; ".join(parts) or "-"


def figures_table(metrics: dict[str, Any]) -> list[str]:
    """Pooled, pooled over the threshold's sets, then per data set: one row each."""
    rows = [("all sets pooled", metrics["pooled"])]
    if metrics.get("pooled_sets"):
        rows.append(("pooled " + " + ".join(metrics["pooled_sets"]["sets"]), metrics["pooled_sets"]))
    rows += list(metrics["per_dataset"].items())
    out = ["| data | n (malignant) | AUC [95 % CI] | sensitivity [95 % CI] | specificity [95 % CI] | work reduction | "
           "sensitivity per diagnosis |", "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        out.append(f"| {name} | {r['n_images']} ({r['n_malignant']}) | {_auc(r)} | "
                   f"{_pct(r['sensitivity'], r['sensitivity_ci'])} | {_pct(r['specificity'], r['specificity_ci'])} | "
                   f"{_pct(r['work_reduction'])} | {_dx(r)} |")
    return out


def targets_table(test: dict[str, Any]) -> list[str]:
    """The issue's targets against the measured test figures (computed, never typed)."""
    per = test["per_dataset"]
    pooled = test.get("pooled_sets") or test["pooled"]
    dx = pooled.get("per_diagnosis", {})

    def row(name: str, value: float | None, target: float, fmt: str) -> str:
        met = "n/a" if value is None else ("met" if value >= target else "**missed**")
        shown = "n/a" if value is None else (f"{value:.3f}" if fmt == "auc" else _pct(value))
        goal = f">= {target:.2f}" if fmt == "auc" else f">= {100 * target:.0f} %"
        return f"| {name} | {goal} | {shown} | {met} |"

    lines = ["| target (test splits) | goal | measured | |", "|---|---|---|---|"]
    for name, goal in (("ham10000", 0.92), ("isic2019", 0.87), ("isic2020", 0.85)):
        if name in per:
            lines.append(row(f"AUC {name}", per[name]["auc"], goal, "auc"))
    if "isic2020" in per:
        mel = (per["isic2020"].get("per_diagnosis") or {}).get("melanoma") or {}
        lines.append(row("sensitivity melanoma, isic2020 (screening)", mel.get("sensitivity"), 0.90, "pct"))
    clinic = _pooled_of(test, ("ham10000", "isic2019"))
    name = "ham10000 + isic2019" if clinic is not None else "all"
    clinic = clinic or test.get("pooled_sets") or test["pooled"]
    dx = clinic.get("per_diagnosis", {})
    lines.append(row(f"sensitivity, pooled {name}", clinic["sensitivity"], 0.95, "pct"))
    lines.append(row(f"specificity, pooled {name}", clinic["specificity"], 0.60, "pct"))
    for key, label in (("melanoma", "melanoma"), ("bcc", "BCC")):
        if dx.get(key, {}).get("n"):
            lines.append(row(f"sensitivity {label}, pooled {name}", dx[key]["sensitivity"], 0.93, "pct"))
    return lines


def _pooled_of(test: dict[str, Any], sets: Sequence[str]) -> dict[str, Any] | None:
    """The figures pooled over exactly ``sets`` when the evaluation reported them (pooled_sets or extra)."""
    for key in ("pooled_sets", *[k for k in test if k.startswith("pooled_")]):
        block = test.get(key)
        if isinstance(block, dict) and sorted(block.get("sets") or []) == sorted(sets):
            return block
    return None


def screening_lines(test: dict[str, Any], prevalence: float = 0.018) -> list[str]:
    """ISIC 2020 (screening patients): melanoma sensitivity with its CI, and the benign share (work
    reduction) recomputed at the real screening prevalence from sensitivity and specificity."""
    r = test["per_dataset"].get("isic2020")
    if not r or r.get("sensitivity") is None or r.get("specificity") is None:
        return []
    sens, spec = r["sensitivity"], r["specificity"]
    wr = prevalence * (1 - sens) + (1 - prevalence) * spec
    missed = prevalence * (1 - sens) * 1000
    return [f"- isic2020 (screening patients, test split): sensitivity {_pct(sens, r['sensitivity_ci'])} on "
            f"{r['n_malignant']} melanomas, specificity {_pct(spec, r['specificity_ci'])}.",
            f"- Work reduction at the real screening prevalence ({100 * prevalence:.1f} % melanoma): "
            f"{prevalence:.3f} x (1 - {sens:.3f}) + {1 - prevalence:.3f} x {spec:.3f} = **{_pct(wr)}** of images to "
            f"benign/, with about {missed:.1f} melanoma(s) per 1,000 images among them (the test split holds "
            f"{100 * r['n_malignant'] / max(1, r['n_images']):.1f} % melanomas, enriched on purpose)."]


def read_scores(folder: Path) -> dict[str, Any] | None:
    """The per-image rows (data set, malignant, p(malignant)) of a `dermsort evaluate` output's scores.csv."""
    import csv

    path = Path(folder) / "scores.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"dataset": [r["dataset"] for r in rows], "malignant": [int(r["malignant"]) for r in rows],
            "p": [float(r["p_malignant"]) for r in rows]}


def rule_cost_lines(basis: dict[str, Any], threshold: float, scores: dict[str, dict[str, Any]]) -> list[str]:
    """What the threshold rule's binding set costs: each large set's sensitivity / specificity at the
    operating threshold and at the threshold the same rule gives on the val images without that set.

    Both thresholds come from val scores (the second is the rule re-run, never a test figure); the test
    rows only report. Threshold alone (the gate is left out, as in the sensitivity tables)."""
    import numpy as np

    from dermsort.runtime.metrics import operating_point

    from .metrics import choose_threshold_sets, large_sets

    binding = basis.get("binding")
    if "val" not in scores or not binding or binding == "pooled":
        return []
    val = scores["val"]
    keep = np.asarray(val["dataset"]) != binding
    if not keep.any():
        return []
    alt, _ = choose_threshold_sets(np.asarray(val["malignant"])[keep], np.asarray(val["p"])[keep],
                                   np.asarray(val["dataset"])[keep], basis.get("target_sensitivity", 0.95),
                                   basis.get("min_malignant", 50))
    lines = ["## What the screening rule costs", "",
             f"The binding set ({binding}) sets the threshold. The same rule on the val images without {binding} "
             f"would give {alt:.4g} instead of {threshold:.4g}. Sensitivity / specificity at each (threshold alone):",
             "", f"| split | set | at {threshold:.4g} (rule with {binding}) | at {alt:.4g} (rule without {binding}) |",
             "|---|---|---|---|"]
    for split in (s for s in ("val", "test") if s in scores):
        rows = scores[split]
        y, p, g = np.asarray(rows["malignant"]), np.asarray(rows["p"]), np.asarray(rows["dataset"])
        sets = large_sets(y, g, basis.get("min_malignant", 50))
        for name, mask in [("all sets pooled", np.ones(len(y), bool))] + [(n, g == n) for n in sets]:
            cells = []
            for t in (threshold, alt):
                sens, spec = operating_point(y[mask], p[mask], t)
                cells.append(f"{_pct(sens)} / {_pct(spec)}")
            lines.append(f"| {split} | {name} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def _in_order(evaluations: dict[str, dict[str, Any]]) -> list[str]:
    """The evaluations' keys as the card shows them: test, val, then the others (other artifacts) as given."""
    return [k for k in ("test", "val") if k in evaluations] + [k for k in evaluations if k not in ("test", "val")]


def gate_section(manifest: dict[str, Any], evaluations: dict[str, dict[str, Any]], commands: dict[str, str],
                 candidates: str | None) -> list[str]:
    """The not-dermoscopy gate: what it is, how it was chosen, and its rates from `dermsort evaluate --ood`."""
    gate = manifest["metadata"].get("gate") or {}
    if not gate.get("method"):
        return ["## Not-dermoscopy gate", "", "None: this model judges every colour image as if it were dermoscopy.", ""]
    details = gate.get("details", {})
    fit = details.get("fit", {})
    lines = ["## Not-dermoscopy gate", "",
             f"- Score: {gate['method']} on the {details.get('features', 'penultimate features')}, inside every "
             f"exported graph (last output column); score >= {gate['threshold']:.4f} -> `review/`, reason "
             "'not recognised as a dermoscopy image', whatever p(malignant) says.",
             f"- Fitted on {fit.get('dermoscopy_train', '?')} dermoscopy train images, {fit.get('ood_train', '?')} "
             f"real non-dermoscopy train images (ood.csv train split: SD-198 clinical photos by class, scikit-image/"
             f"scikit-learn photos) and {fit.get('rendered_train', '?')} rendered negatives (text pages, screenshots, "
             "charts, patterns, noise); threshold rule: " + str(details.get("rule", "?")) + " (val only); "
             f"chosen: {details.get('chosen_by', '?')}.",
             "- INT8 artifacts keep the gate's operations in float; the export's parity gate counts an image the "
             "reference rejects and an artifact lets through like a malignant-to-benign flip."]
    if candidates:
        lines.append(f"- Candidates compared on the same splits (max-softmax, energy; Mahalanobis, probe and both on "
                     f"the penultimate features alone and with the means of earlier stages): "
                     f"[{candidates}]({candidates}).")
    lines.append("")
    # every evaluation (e.g. the fastest accepted artifact's too): the gate must hold for every accepted
    # artifact, so each one's rates are shown
    for split in _in_order(evaluations):
        ev = evaluations[split]
        g, o = ev.get("gate"), ev.get("ood")
        if not g and not o:
            continue
        lines += [f"### {ev['split']} split ({Path(str(ev['runner'].get('artifact'))).name})", ""]
        if commands.get(split):
            lines += ["```", commands[split], "```", ""]
        if g:
            lines += ["| dermoscopy set | images | rejected by the gate | work reduction with gate (without) |",
                      "|---|---|---|---|"]
            for name, r in [("pooled", g["pooled"]), *g["per_dataset"].items()]:
                lines.append(f"| {name} | {r['n']} | {r['rejected']} ({_pct(r['rejected_rate'])}) | "
                             f"{_pct(r['work_reduction'])} ({_pct(r['work_reduction_without_gate'])}) |")
            lines.append("")
        if o:
            lines += ["| non-dermoscopy | images | reach benign/ [95 % CI] | gate AUROC | FPR at 95 % TPR |",
                      "|---|---|---|---|---|"]
            for label, table in (("kind", o["per_kind"]), ("source", o["per_source"])):
                for name, r in table.items():
                    auroc = "n/a" if r.get("auroc") is None else f"{r['auroc']:.3f}"
                    lines.append(f"| {label}: {name} | {r['n']} | {r['reached_benign']} "
                                 f"({_pct(r['reached_benign_rate'], r['reached_benign_ci'])}) | {auroc} | "
                                 f"{_pct(r.get('fpr_at_95tpr'))} |")
            lines.append("")
    return lines


def warnings(test: dict[str, Any], target: float) -> list[str]:
    """Every data set / diagnosis of the test split whose sensitivity falls below the target: said plainly."""
    out = []
    for name, r in test["per_dataset"].items():
        if r["sensitivity"] is not None and r["sensitivity"] < target:
            out.append(f"{name}: sensitivity {_pct(r['sensitivity'], r['sensitivity_ci'])} on {r['n_malignant']} malignant "
                       f"test images ({r['confusion']['fn']} sent to benign/) - below the {100 * target:.0f} % target.")
    pooled = test.get("pooled_sets") or test["pooled"]
    for name, f in (pooled.get("per_diagnosis") or {}).items():
        if f["n"] and f["sensitivity"] < target:
            out.append(f"{name}: sensitivity {_pct(f['sensitivity'], f['sensitivity_ci'])} ({f['missed']} of {f['n']} missed).")
    return out


def comparison_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Training runs side by side (their own metrics.json: val-chosen epoch and threshold, test figures)."""
    lines = ["| run | best val score | test AUC per set | test sensitivity / specificity (pooled basis sets) | "
             "melanoma / BCC / SCC-AK sensitivity |", "|---|---|---|---|---|"]
    for name, m in runs.items():
        test = m["test"]
        pooled = test.get("pooled_sets") or test["pooled"]
        aucs = ", ".join(f"{k} {v['auc']:.3f}" for k, v in test["per_dataset"].items()
                         if v["auc"] is not None and v["n_malignant"] >= 50)
        dx = pooled.get("per_diagnosis", {})
        lines.append(f"| {name} | {m.get('best_val_score', m.get('best_val_auc', 0)):.4f} | {aucs} | "
                     f"{_pct(pooled['sensitivity'])} / {_pct(pooled['specificity'])} | "
                     + " / ".join(_pct(dx.get(k, {}).get("sensitivity")) for k in ("melanoma", "bcc", "scc/ak")) + " |")
    return lines


def render(manifest: dict[str, Any], evaluations: dict[str, dict[str, Any]], commands: dict[str, str],
           bundle_label: str, roc: dict[str, str], extra_notes: Sequence[str] = (),
           runs: dict[str, dict[str, Any]] | None = None, gate_candidates: str | None = None,
           scores: dict[str, dict[str, Any]] | None = None) -> str:
    meta = manifest["metadata"]
    recipe = meta.get("provenance", {}).get("recipe", {})
    basis = meta.get("validation", {}).get("threshold_basis") or {}
    artifacts = manifest.get("artifacts", [])
    dev = meta.get("development_model", True)
    lines = [f"# Model card: the bundled default model{' (DEVELOPMENT MODEL)' if dev else ''}", "",
             f"`{meta['model_id']}` in `{bundle_label}`. Generated by `python -m dermsort.train.model_card` from the "
             "bundle's metadata and `dermsort evaluate` outputs; no figure here is typed by hand.", "",
             "**Not a medical device.** A triage aid: images it sends to `benign/` may be skipped in a first "
             "pass; everything else goes to `review/`. It does not diagnose and must never be used to rule out a "
             "lesion a clinician is worried about.", ""]
    lines += ["## Model", "",
              f"- Architecture: {meta['architecture']}, input {meta['preprocess']['input_size']} px "
              f"(shorter side resized to {meta['preprocess']['resize_shorter']}, centre crop), "
              f"test-time flips inside the graph: {recipe.get('tta', 'none')}.",
              preprocessing_line(meta["preprocess"]),
              f"- Head: {len(meta['classes'])} classes ({', '.join(meta['classes'])}); p(malignant) = sum of "
              f"{', '.join(meta['malignant_classes'])}. The top diagnosis is reported for information only; the "
              "benign/review rule uses p(malignant) alone.",
              f"- Operating threshold: p(malignant) < {meta['threshold']:.6g} -> benign. Rule: {basis.get('rule', '?')}; "
              f"binding set: {basis.get('binding', '?')}; rests on "
              + ", ".join(f"{k} ({v['n_malignant']} malignant val images)" for k, v in basis.get("sets", {}).items()) + ".",
              "- Artifacts: " + ", ".join(
                  f"{a['name']} ({(a.get('parity') or {}).get('status', '?')}, threshold {a.get('threshold', 0):.4g}, "
                  f"{a.get('size_bytes', 0) / 1e6:.1f} MB)" for a in artifacts) + ".",
              f"- Pretrained start: {meta.get('provenance', {}).get('pretrained', {}).get('package', 'none')} "
              f"{meta.get('provenance', {}).get('pretrained', {}).get('version', '')} (offline PyPI package).", ""]
    lines += ["## Training data and split", ""]
    lines += [f"- {line}" for line in meta.get("provenance", {}).get("training_data", [])]
    lines += ["", "Splits are the data sets' own `split` column: grouped by lesion (HAM10000, ISIC 2019, PH2) or "
              "patient (ISIC 2020), stratified, seeded; checked leak-free. The epoch, the test-time flips and the "
              "threshold were chosen on validation images only; test images were scored once, at the end.", ""]
    config = recipe.get("config", {})
    lines += ["## Recipe", "", "```", commands.get("train", "(not recorded)"), "```", "",
              f"Epochs run: {recipe.get('epochs_run')} (best: {recipe.get('best_epoch')}, chosen by "
              f"{recipe.get('selection', '?')}); stopped by {recipe.get('stopped_by')}; training time "
              f"{recipe.get('train_seconds', 0) / 60:.0f} min on {recipe.get('threads')} CPU threads "
              f"({recipe.get('device')}); frozen stages {config.get('freeze_stages')}, balance {config.get('balance')}, "
              f"label smoothing {config.get('label_smoothing')}, lr {config.get('lr')} (head x{config.get('head_lr_mult')}).", ""]
    tta = recipe.get("tta_val") or {}
    if tta:
        lines += ["Test-time flips measured on validation (AUC inside each large val set):", "",
                  "| flips | val AUC pooled | per set |", "|---|---|---|"]
        for mode, f in tta.items():
            per = ", ".join(f"{k} {v:.4f}" for k, v in (f.get("val_auc_sets") or {}).items() if v is not None)
            lines.append(f"| {mode} | {f['val_auc']:.4f} | {per} |")
        lines.append("")
    if "test" in evaluations:
        lines += ["## Targets (test splits; they chose nothing)", ""] + targets_table(evaluations["test"]) + [""]
        warned = warnings(evaluations["test"], meta.get("validation", {}).get("target_sensitivity", 0.95))
        if warned:
            lines += ["## Where it falls short (read before use)", ""] + [f"- {w}" for w in warned] + [""]
    if "test" in evaluations:
        screening = screening_lines(evaluations["test"])
        if screening:
            lines += ["## Screening population (ISIC 2020)", ""] + screening + [""]
    lines += rule_cost_lines(basis, meta["threshold"], scores or {})
    lines += gate_section(manifest, evaluations, commands, gate_candidates)
    if runs:
        lines += ["## Heads and recipes compared (same splits; each run's own val-chosen epoch and threshold)", ""]
        lines += comparison_table(runs) + ["", "Source: each run's `metrics.json` (copied to `docs/model-card/`)."]
        lines += [""]
    for split in _in_order(evaluations):
        ev = evaluations[split]
        artifact = Path(str(ev["runner"].get("artifact"))).name
        title = {"test": "Test split", "val": "Validation split (chose the epoch, flips and threshold)"}.get(
            split, f"{ev['split'].capitalize()} split through {artifact} (its own recalibrated threshold)")
        lines += [f"## {title}", "", f"Runner: {ev['runner'].get('backend')} ({artifact}); "
                  f"threshold {ev['threshold']:.6g}; Wilson 95 % CIs, AUC stratified bootstrap. Reproduce:", "",
                  "```", commands.get(split, ""), "```", ""] + figures_table(ev) + [""]
        if split in roc:
            lines += [f"![ROC per data set, {split}]({roc[split]})", ""]
    lines += ["## Populations, cameras and lesion types", "", "Seen in training:", ""] + [f"- {s}" for s in _SEEN]
    lines += ["", "Not seen, or too rare to claim anything:", ""] + [f"- {s}" for s in _NOT_SEEN] + [""]
    if extra_notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in extra_notes] + [""]
    lines += ["Inputs that fail dermsort's checks (corrupt, truncated, grayscale, tiny, blank, not an image) always go "
              "to `review/` with a reason, whatever the model would say.", ""]
    return "\n".join(lines)


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--eval", "evals", multiple=True, required=True,
              help="SPLIT=DIR of a `dermsort evaluate` output (metrics.json, roc.png); repeatable (test=..., val=...).")
@click.option("--command", "commands", multiple=True, help="NAME=COMMAND shown in the card (train, test, val).")
@click.option("--note", "notes", multiple=True, help="An extra note line (measured elsewhere; give its command).")
@click.option("--run", "runs", multiple=True, help="NAME=metrics.json of a `dermsort train` run to compare; repeatable.")
@click.option("--gate-report", "gate_report", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="gate-candidates.md written by `dermsort fit-gate` (copied next to the card and linked).")
@click.option("--shortcut", "shortcut", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The JSON of `python -m dermsort.train.shortcut` (the data-set shortcut check).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def main(bundle: Path, evals: tuple[str, ...], commands: tuple[str, ...], notes: tuple[str, ...], runs: tuple[str, ...],
         gate_report: Path | None, shortcut: Path | None, out: Path) -> None:
    """Write the model card for BUNDLE from its manifest and evaluation outputs."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    evaluations, roc, scores = {}, {}, {}
    assets = out.parent / "model-card"
    assets.mkdir(parents=True, exist_ok=True)
    for item in evals:
        split, _, folder = item.partition("=")
        evaluations[split] = json.loads((Path(folder) / "metrics.json").read_text())
        rows = read_scores(Path(folder)) if split in ("val", "test") else None
        if rows is not None:
            scores[split] = rows
        if (Path(folder) / "roc.png").is_file():
            shutil.copyfile(Path(folder) / "roc.png", assets / f"roc-{split}.png")
            shutil.copyfile(Path(folder) / "metrics.json", assets / f"metrics-{split}.json")
            roc[split] = f"model-card/roc-{split}.png"
    named = dict(c.partition("=")[::2] for c in commands)
    compared = {}
    for item in runs:
        name, _, path = item.partition("=")
        compared[name] = json.loads(Path(path).read_text())
        if Path(path).resolve() != (assets / f"run-{name}.json").resolve():
            shutil.copyfile(path, assets / f"run-{name}.json")
    try:
        label = str(bundle.resolve().relative_to(Path.cwd()))
    except ValueError:
        label = str(bundle)
    candidates = None
    if gate_report is not None:
        shutil.copyfile(gate_report, assets / "gate-candidates.md")
        candidates = "model-card/gate-candidates.md"
    if shortcut is not None:
        from .shortcut import line

        notes = (*notes, line(json.loads(shortcut.read_text()))
                 + f" Command: `python -m dermsort.train.shortcut CHECKPOINT --data ... --out {shortcut.name}`.")
    out.write_text(render(manifest, evaluations, named, label, roc, notes, compared, candidates, scores))
    click.echo(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
