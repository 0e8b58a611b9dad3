"""``DIR/validation.html`` and ``DIR/validation.json``: the site check's page (one offline file, no script).

Built like report.html: every file name and label is untrusted and HTML-escaped, and the
Content-Security-Policy allows only the page's own style sheet (by hash) and nothing from the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import DermsortError
from .report_assets import CSS
from .report_page import _csp_hash, _text


def _pct(x: Any, ci: Any = None) -> str:
    if not isinstance(x, (int, float)):
        return "n/a"
    text = f"{100 * x:.1f} %"
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f" (95 % CI {100 * ci[0]:.1f}\u2013{100 * ci[1]:.1f} %)"
    return text


def _table(head: list[str], rows: list[list[Any]]) -> str:
    return ('<table class="left"><tr>' + "".join(f"<th>{_text(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_text(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")


def render(report: dict[str, Any]) -> str:
    d, a, site, claim = report["data"], report["at_validated_threshold"], report["site_threshold"], report["claim"]
    csp = f"default-src 'none'; style-src {_csp_hash(CSS)}; base-uri 'none'; form-action 'none'"
    title = f"dermsort site check \u2013 {d.get('folder', '')}"
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{csp}">', f"<title>{_text(title)}</title>",
             f"<style>{CSS}</style></head><body><header>", f"<h1>{_text(title)}</h1>"]
    if claim.get("holds") is False:
        parts.append(f'<div class="banner" id="claim" role="alert">{_text(claim["text"])}</div>')
    elif claim.get("text"):
        parts.append(f'<div class="warn" id="claim">{_text(claim["text"])}</div>')
    if site.get("text"):
        parts.append(f'<div class="warn" id="site">{_text(site["text"])}</div>')
    facts = [("Model", report["model_id"]),
             ("Artifact", f"{report['artifact']['name']} on {report['backend'].get('backend')} "
                          "(the one `sort --backend auto` runs here)"),
             ("Validated threshold", f"{report['validated_threshold']:.4f}"),
             ("Target sensitivity", _pct(report["target_sensitivity"])),
             ("Cases", f"{d['n_cases']} in {d.get('folder', '')}" + (f", split {d['split']}" if d.get("split") else "")
              + f": {d['n_scored']} scored ({d['n_malignant']} malignant), {d['n_excluded']} excluded")]
    parts.append('<dl class="facts">' + "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in facts)
                 + "</dl></header><main>")
    rows = []
    if a:
        rows.append(["validated threshold", f"{a['threshold']:.4f}", _pct(a["sensitivity"], a["sensitivity_ci"]),
                     _pct(a["specificity"], a["specificity_ci"]), _pct(a["work_reduction"])])
    if site.get("needed_threshold") is not None:
        label = "site threshold" if site.get("confident") else "site threshold (too few cases)"
        rows.append([label, f"{site['needed_threshold']:.4f}", _pct(site["sensitivity"], site["sensitivity_ci"]),
                     _pct(site["specificity"], site["specificity_ci"]), _pct(site["work_reduction"])])
    parts.append('<section id="figures"><h2>At each threshold</h2>'
                 + _table(["threshold", "value", "sensitivity", "specificity", "work reduction"], rows) + "</section>")
    dx_rows = []
    for name in (a or {}).get("per_diagnosis", {}):
        v = a["per_diagnosis"][name]
        s = (site.get("per_diagnosis") or {}).get(name, {})
        dx_rows.append([name, v["n"], _pct(v["sensitivity"], v["sensitivity_ci"]),
                        _pct(s.get("sensitivity"), s.get("sensitivity_ci"))])
    parts.append('<section id="per-diagnosis"><h2>Sensitivity per diagnosis</h2>'
                 + _table(["diagnosis", "cases", "at the validated threshold", "at the site threshold"], dx_rows)
                 + "</section>")
    parts.append(f'<section id="excluded"><h2>Excluded: could not be decoded ({d["n_excluded"]})</h2>'
                 + _table(["file", "reason"], [[x["file"], x["reason"]] for x in report["excluded"]]) + "</section>")
    parts.append("</main><footer>dermsort validate. A triage aid, not a diagnosis.</footer></body></html>")
    return "\n".join(parts)


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write both files (each atomically); returns their paths."""
    paths = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("validation.json", json.dumps(report, indent=1, default=str)),
                           ("validation.html", render(report))):
            target = out / name
            tmp = out / f".{name}.{os.getpid()}.tmp"
            tmp.write_text(text + "\n", encoding="utf-8", errors="surrogateescape")
            os.replace(tmp, target)
            paths.append(target)
    except OSError as exc:
        raise DermsortError(f"cannot write the validation report to {out}: {exc.strerror or exc}") from None
    return paths[0], paths[1]
