"""Bench reports: report.md (people), report.json + report.csv (scripts), latency_vs_sensitivity.png."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

CSV_FIELDS = [
    "kind", "backend", "artifact", "precision", "format", "size_mb", "threshold", "accepted", "reference",
    "latency_p50_ms", "latency_p95_ms", "best_batch", "best_batch_images_per_s", "e2e_images_per_s",
    "speedup_e2e_vs_naive", "speedup_e2e_vs_dermosort", "cold_start_s", "peak_rss_mb", "auc", "sensitivity", "sensitivity_ci_low",
    "sensitivity_ci_high", "specificity", "specificity_ci_low", "specificity_ci_high", "work_reduction",
    "agreement", "flips_to_benign", "flips_to_review", "max_abs_dp", "missed_malignant", "n_images", "n_malignant",
    "passed", "error",
]


def _fmt(value: Any, digits: int = 1, pct: bool = False) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value * 100:.{digits}f}%" if pct else f"{value:.{digits}f}"
    return str(value)


def _ci(value: Any, ci: Any) -> str:
    if value is None:
        return "—"
    if not ci:
        return _fmt(value, 1, pct=True)
    return f"{value * 100:.1f}% ({ci[0] * 100:.1f}–{ci[1] * 100:.1f})"


def _name(row: dict[str, Any]) -> str:
    if row["kind"] == "baseline":
        return f"**naive baseline** ({row.get('backend') or '?'})"
    return f"{row['backend']} / {row['artifact']}" + (" (ref)" if row.get("reference") else "")


def public_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows without the per-image decisions (those go to decisions.csv)."""
    return [{k: v for k, v in row.items() if k != "decisions"} for row in report["rows"]]


def render_markdown(report: dict[str, Any]) -> str:
    m, s, b, d = report["machine"], report["settings"], report["bundle"], report["data"]
    rows = report["rows"]
    lines = [
        f"# dermsort bench: {b['model_id']} ({b['architecture']}, {b['input_size']} px)",
        "",
        f"{report['started']} → {report['finished']}. Command: `{report['command']}`",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} — {m['logical_cores']} logical cores ({m['usable_cores']} usable, "
        f"{m['physical_cores']} physical), flags {', '.join(m['cpu_flags']) or '—'}; RAM {m['ram_gb']} GB; "
        f"GPU: {', '.join(m['gpus'])}",
        f"- OS: {m['os']} (kernel {m['kernel']}, {m['arch']}); Python {m['python']}",
        "- " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- Load average (1/5/15 min) before: {report['load_average_before']}, after: {report['load_average_after']}. "
        "On a shared machine other work competes for the same cores: read differences under ~10–15% as noise.",
        "",
        "## Settings",
        "",
        f"- Model-only: {s['warmup']} warm-up call(s), then {s['reps']} timed batch-1 calls (p50/p95 over real "
        f"preprocessed images); throughput per batch size 1/4/8/16/32 from the median of ≥3 calls "
        f"(about {2 * s['reps']} images per size).",
        f"- End-to-end: the runtime `Sorter` in dry-run mode (read + sha256 + JPEG draft decode in a thread pool "
        f"+ batched inference at batch {s['batch_size']} + decision), in a fresh process per backend, "
        f"{'1 warm-up pass and ' if s['warmup'] else ''}{s['e2e_reps']} timed pass(es) over all images; median. "
        "Page cache warm.",
        f"- Cold start: wall clock from spawning a fresh `python` to its first decision (imports, bundle, sha256 "
        f"verify, backend load, one image decoded and classified); median of {s['cold_reps']} process(es). "
        "Peak RSS: `VmHWM` of the end-to-end process (its own peak; `ru_maxrss` would carry the parent's "
        "RSS across fork + exec).",
        f"- Decode workers: {s['workers'] or 'runtime default'}; inference threads: {s['threads'] or 'runtime default'}.",
        f"- An artifact passes when the export's parity gate accepted it and its agreement with the reference here "
        f"is not significantly below {s['min_agreement']:.0%} (Wilson 95 % upper bound ≥ it); only passing "
        "artifacts enter the machine profile.",
        "",
        "## Data",
        "",
        f"{d['n_images']} images, {d['n_malignant']} malignant: "
        + "; ".join(f"{k} {v['images']} ({v['malignant']} malignant)" for k, v in d["datasets"].items()) + ".",
        "",
        "## Speed",
        "",
        "| backend / artifact | precision | model p50 ms | model p95 ms | best batch: img/s | end-to-end img/s "
        "| vs naive | vs DermoSort-style | cold start s | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        best = f"{r['best_batch']}: {_fmt(r.get('best_batch_images_per_s'))}" if r.get("best_batch") else "—"
        lines.append(f"| {_name(r)} | {r.get('precision', '')} | {_fmt(r.get('latency_p50_ms'), 2)} | "
                     f"{_fmt(r.get('latency_p95_ms'), 2)} | {best} | {_fmt(r.get('e2e_images_per_s'))} | "
                     f"{_fmt(r.get('speedup_e2e_vs_naive'), 2)}× | {_fmt(r.get('speedup_e2e_vs_dermosort'), 1)}× | "
                     f"{_fmt(r.get('cold_start_s'), 2)} | "
                     f"{_fmt(r.get('peak_rss_mb'), 0)} |")
    lines += ["", "## Decisions", "",
              "| backend / artifact | threshold | AUC | sensitivity (95% CI) | specificity (95% CI) | work reduction "
              "| agreement with ref | flips → benign / → review | passed |",
              "|---|---:|---:|---|---|---:|---:|---:|---|"]
    for r in rows:
        flips = f"{r['flips_to_benign']} / {r['flips_to_review']}" if r.get("flips_to_benign") is not None else "—"
        lines.append(f"| {_name(r)} | {_fmt(r.get('threshold'), 4)} | {_fmt(r.get('auc'), 3)} | "
                     f"{_ci(r.get('sensitivity'), r.get('sensitivity_ci95'))} | "
                     f"{_ci(r.get('specificity'), r.get('specificity_ci95'))} | {_fmt(r.get('work_reduction'), 1, True)} | "
                     f"{_fmt(r.get('agreement'), 1, True)} | {flips} | {_fmt(r.get('passed'))} |")
    ds = report.get("dermosort_style") or {}
    if ds:
        lines += ["", (f"DermoSort-style baseline — {ds['label']}: {ds['e2e_images_per_s']:.1f} img/s end to end in "
                       "process (median of the timed passes); the \"vs DermoSort-style\" column divides by it. "
                       "Whole-process figures: `python -m studies.wholeproc` (from a checkout)." if not ds.get("error")
                       else f"DermoSort-style baseline {ds['error']}.")]
    base = next((r for r in rows if r["kind"] == "baseline"), None)
    if base is not None:
        lines += ["", f"Baseline — {base.get('label', '')}. Its decisions use the reference threshold; its "
                  "disagreements with the reference come from the full-resolution decode (the runtime decodes "
                  "JPEGs with `draft`).", ""]
    lines += ["## Model-only throughput by batch size (images/s)", "",
              "| backend / artifact | " + " | ".join(f"batch {k}" for k in ("1", "4", "8", "16", "32")) + " |",
              "|---|" + "---:|" * 5]
    for r in rows:
        if r.get("throughput_by_batch"):
            tb = r["throughput_by_batch"]
            lines.append(f"| {_name(r)} | " + " | ".join(_fmt(tb.get(k)) for k in ("1", "4", "8", "16", "32")) + " |")
    errors = [r for r in rows if r.get("error")]
    if errors or report["skipped"]:
        lines += ["", "## Not measured / errors", ""]
        lines += [f"- {_name(r)}: {r['error']}" for r in errors]
        lines += [f"- {s_['backend']}: {s_['reason']}" for s_ in report["skipped"]]
    lines += ["", "## Machine profile (`--backend auto`)", ""]
    if report.get("profile"):
        lines.append(f"Written to `{report['profile']['path']}`; fastest acceptable first:")
        lines.append("")
        lines += [f"{i}. {e['backend']} / {e['artifact']}: {e['images_per_s']} img/s end to end"
                  for i, e in enumerate(report["profile"]["ranking"], 1)]
    else:
        lines.append("Not written (`--no-profile`, or no artifact passed).")
    lines += (["", f"(No plot: {report['plot_missing']}.)", ""] if report.get("plot_missing")
              else ["", "![latency vs sensitivity](latency_vs_sensitivity.png)", ""])
    if b.get("development_model"):
        lines += ["The bundle is a development model: its sensitivity/specificity are for comparing artifacts, "
                  "not clinical figures.", ""]
    return "\n".join(lines)


def write_csv(report: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in public_rows(report):
            flat = dict(row)
            for key in ("sensitivity", "specificity"):
                ci = row.get(f"{key}_ci95") or (None, None)
                flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = ci
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in flat.items()})


def write_decisions(report: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "backend", "artifact", "file", "decision", "p_malignant", "reason"])
        for row in report["rows"]:
            for d in row.get("decisions", []):
                writer.writerow([row["kind"], row["backend"], row["artifact"], d["file"], d["decision"],
                                 d["p_malignant"], d.get("reason", "")])


def plot(report: dict[str, Any], path: Path) -> list[str]:
    """Sensitivity (Wilson CI) against model-only and end-to-end cost; one colour per row, legend below,
    each artifact labelled with whether it passed the export's parity gate. Returns the legend's labels."""
    import os

    from dermsort.runtime.probe import cache_dir

    # matplotlib's font cache goes into dermsort's cache folder, not ~/.cache/matplotlib (unless the user chose)
    os.environ.setdefault("MPLCONFIGDIR", str(cache_dir() / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("sensitivity") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharey=True)
    colours = plt.get_cmap("tab10")
    handles = []
    for i, r in enumerate(rows):
        ci = r.get("sensitivity_ci95") or (r["sensitivity"], r["sensitivity"])
        yerr = [[r["sensitivity"] - ci[0]], [ci[1] - r["sensitivity"]]]
        marker = "s" if r["kind"] == "baseline" else ("*" if r.get("reference") else "o")
        label = ("naive baseline" if r["kind"] == "baseline" else f"{r['backend']} / {r['artifact']}"
                 + (" (reference)" if r.get("reference") else "")
                 + (": passed the gate" if r.get("passed") else ": NOT passed (hollow)"))
        xs = (r.get("latency_p50_ms"), 1000.0 / r["e2e_images_per_s"] if r.get("e2e_images_per_s") else None)
        for ax, x in zip(axes, xs):
            if x is None:
                continue
            h = ax.errorbar([x], [r["sensitivity"]], yerr=yerr, fmt=marker, capsize=3, color=colours(i % 10),
                            markersize=10 if marker == "*" else 7,
                            markerfacecolor=colours(i % 10) if (r.get("passed") or r["kind"] == "baseline") else "white")
        handles.append((h, label))
    axes[0].set_xlabel("model-only latency, batch 1, p50 (ms)")
    axes[1].set_xlabel("end to end, files → decisions (ms per image)")
    axes[0].set_ylabel("sensitivity at the artifact's threshold (95% Wilson CI)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, ax.get_xlim()[1] * 1.08)
    fig.legend([h for h, _ in handles], [lbl for _, lbl in handles], loc="lower center", ncol=3, fontsize=8,
               frameon=False)
    fig.suptitle(f"{report['bundle']['model_id']} on {report['machine']['cpu']} "
                 f"({report['machine']['logical_cores']} cores): {report['data']['n_images']} images, "
                 f"{report['data']['n_malignant']} malignant; hollow = not passed", fontsize=9)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [lbl for _, lbl in handles]


def missing_modules() -> tuple[list[str], list[str]]:
    """What `dermsort bench` needs that is not installed, checked before any measuring: (modules it cannot
    measure without, modules whose absence only loses the plot)."""
    from importlib.util import find_spec

    return ([m for m in ("psutil",) if find_spec(m) is None], [m for m in ("matplotlib",) if find_spec(m) is None])


def write_reports(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the four reports (and decisions.csv, per image) into ``out``; returns their paths.

    The measurements always reach report.md/json/csv: a plot that cannot be drawn (matplotlib missing,
    or failing) is left out, and ``report["plot_missing"]`` says why (in report.md and report.json too)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "csv": out / "report.csv",
             "png": out / "latency_vs_sensitivity.png", "decisions": out / "decisions.csv"}
    try:
        plot(report, paths["png"])
    except ImportError as exc:
        report["plot_missing"] = (f"{paths['png'].name} not drawn: {getattr(exc, 'name', None) or exc} is not "
                                  'installed (pip install "dermsort[bench]")')
    except Exception as exc:  # noqa: BLE001 - a picture must never cost the measurements
        report["plot_missing"] = f"{paths['png'].name} not drawn: {type(exc).__name__}: {exc}"
    if report.get("plot_missing"):
        del paths["png"]
    public = dict(report, rows=public_rows(report))
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(public, indent=2, default=str) + "\n")
    os.replace(tmp, paths["json"])
    write_csv(report, paths["csv"])
    write_decisions(report, paths["decisions"])
    paths["md"].write_text(render_markdown(report))
    return paths
