"""What ``--backend auto`` costs over the backend it chooses: a one-image ``dermsort sort``, whole processes.

    python -m studies.auto_overhead IMAGE [--model BUNDLE] [--repeats 7] [--backends auto,onnxruntime,openvino]

Each repeat runs one fresh ``dermsort sort`` process per backend, in a rotating order (a burst of load
hits all alike); medians over the repeats. One untimed warm-up per backend first (page cache; ``auto``'s
probe when the machine profile is missing or stale, so the timed runs are the steady state). Prints JSON:
per-backend median wall seconds, which backend/artifact auto ran, and auto's median over the median of
the same backend named explicitly (the target is <= 1.10).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click


def _one(image: Path, backend: str, model: str | None, work: Path, precision: str | None) -> tuple[float, dict[str, Any]]:
    inp, out = work / "in", work / "out"
    shutil.rmtree(work, ignore_errors=True)
    inp.mkdir(parents=True)
    shutil.copyfile(image, inp / image.name)
    cmd = [sys.executable, "-m", "dermsort.cli", "sort", str(inp), "--out", str(out), "--backend", backend, "--json"]
    if model:
        cmd += ["--model", model]
    if precision:
        cmd += ["--precision", precision]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        raise click.ClickException(f"{backend}: {res.stderr.strip()[-300:]}")
    return seconds, json.loads(res.stdout)["backend"]


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="Bundle (default: the bundled model).")
@click.option("--repeats", type=click.IntRange(1, 100), default=7, show_default=True)
@click.option("--backends", default="auto,onnxruntime,openvino", show_default=True)
def main(image: Path, model: str | None, repeats: int, backends: str) -> None:
    names = [b.strip() for b in backends.split(",") if b.strip()]
    times: dict[str, list[float]] = {b: [] for b in names}
    ran: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dermsort-auto-overhead-") as tmp:
        work = Path(tmp)
        for b in names:  # warm-up (and auto's probe, if due)
            _, ran[b] = _one(image, b, model, work / "w", None)
        for r in range(repeats):
            for k in range(len(names)):
                b = names[(k + r) % len(names)]
                seconds, ran[b] = _one(image, b, model, work / "w", None)
                times[b].append(seconds)
        # auto against the very artifact it chose, named explicitly
        chosen = ran.get("auto")
        same: list[float] = []
        paired: list[float] = []
        if chosen:
            named = (model, chosen.get("precision"))
            _, got = _one(image, chosen["backend"], *named[:1], work / "w", named[1])
            if got.get("artifact") != chosen["artifact"]:  # another artifact of that precision came first: name the file
                from dermsort.runtime.bundle import load_bundle

                bundle, _ = load_bundle(model)
                named = (str(bundle.root / bundle.get(chosen["artifact"]).path), None)
                _, got = _one(image, chosen["backend"], named[0], work / "w", None)
                if got.get("artifact") != chosen["artifact"]:
                    raise click.ClickException(f"cannot name {chosen['artifact']} explicitly")
            for _ in range(repeats):  # paired: auto, then the same artifact named
                seconds, _ = _one(image, "auto", model, work / "w", None)
                paired.append(seconds)
                seconds, _ = _one(image, chosen["backend"], named[0], work / "w", named[1])
                same.append(seconds)
    medians = {b: round(statistics.median(t), 3) for b, t in times.items()}
    out: dict[str, Any] = {"image": str(image), "repeats": repeats, "median_s": medians,
                           "runs_s": {b: [round(x, 3) for x in t] for b, t in times.items()},
                           "auto_ran": chosen, "load_before": load_before, "load_after": os.getloadavg()}
    if chosen and same:
        out["paired"] = {"auto_median_s": round(statistics.median(paired), 3),
                         "chosen_named_median_s": round(statistics.median(same), 3),
                         "auto_runs_s": [round(x, 3) for x in paired], "named_runs_s": [round(x, 3) for x in same]}
        out["auto_over_chosen"] = round(statistics.median(paired) / statistics.median(same), 3)
    click.echo(json.dumps(out, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
