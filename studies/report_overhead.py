"""What the review page (thumbnails + OUT/report.html) adds to a real `dermsort sort`, end to end.

``python -m studies.report_overhead [--n 300] [--reps 5] [--backend openvino --precision int8]``

Copies ``--n`` real images from ../shared/data (ham10000-sample 600x450, ph2 768x560, isic2020
512x512, in that order) into a temporary folder and runs the installed CLI in fresh processes,
alternating runs WITH the page (as shipped) and WITHOUT it (the same command with the thumbnail
writer and the page builder replaced by no-ops), each into a fresh output folder. Prints the median
wall time and CPU time (user + system of the child process) of each and their ratios; the target
(issue 13) is <= 1.05. On a shared, loaded machine wall times swing by 2-3x between runs while CPU
time stays within a few per cent, so the CPU ratio is the one to read there.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ["ham10000-sample/images", "ph2/images", "isic2020/images"]
WITHOUT = ("import sys, dermsort.runtime.sorter as s, dermsort.runtime.cli as c\n"
           "s.save_thumbnail = lambda *a, **k: None\n"
           "c.write_report_safely = lambda *a, **k: None\n"
           "from dermsort.cli import main\nsys.exit(main(sys.argv[1:]))\n")
WITH = "import sys\nfrom dermsort.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _images(n: int, data: Path) -> list[Path]:
    found: list[Path] = []
    for sub in SETS:
        found += sorted(p for p in (data / sub).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(found) < n:
        raise click.ClickException(f"only {len(found)} images under {data}")
    return found[:n]


@click.command()
@click.option("--n", default=300, show_default=True)
@click.option("--reps", default=5, show_default=True, help="Runs of each kind, alternating.")
@click.option("--backend", default="openvino", show_default=True)
@click.option("--precision", default="int8", show_default=True)
@click.option("--data", type=click.Path(path_type=Path), default=DATA, show_default=True)
def main(n: int, reps: int, backend: str, precision: str, data: Path) -> None:
    times: dict[str, list[float]] = {"with page": [], "without page": []}
    cpu: dict[str, list[float]] = {"with page": [], "without page": []}
    with tempfile.TemporaryDirectory(prefix="dermsort-report-bench-") as tmp:
        inp = Path(tmp) / "in"
        inp.mkdir()
        for p in _images(n, data):
            shutil.copy(p, inp / p.name)
        env = {**os.environ, "DERMSORT_CACHE_DIR": str(Path(tmp) / "cache")}
        for i in range(reps * 2):
            kind = "with page" if i % 2 == 0 else "without page"
            out = Path(tmp) / f"out{i}"
            cmd = [sys.executable, "-c", WITH if kind == "with page" else WITHOUT, "sort", str(inp), "--out", str(out),
                   "--backend", backend, "--precision", precision, "--json"]
            r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[kind].append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
            if res.returncode != 0:
                raise click.ClickException(res.stderr.strip()[-500:])
            has_page = (out / "report.html").is_file()
            if has_page != (kind == "with page"):
                raise click.ClickException(f"run {i} ({kind}): report.html {'present' if has_page else 'missing'}")
            times[kind].append(dt)
            thumbs = list((out / ".dermsort" / "thumbs").glob("*.jpg"))
            extra = (f", page {(out / 'report.html').stat().st_size / 1e3:.0f} KB, {len(thumbs)} thumbnails, "
                     f"largest {max((p.stat().st_size for p in thumbs), default=0) / 1e3:.1f} KB") if has_page else ""
            click.echo(f"run {i + 1:2d} {kind:13s} wall {dt:6.2f} s  cpu {cpu[kind][-1]:6.2f} s{extra}")
            shutil.rmtree(out)
    click.echo(f"{n} images, {backend}/{precision}, {reps} runs each (alternating), load {os.getloadavg()[0]:.2f}:")
    for label, series in (("wall", times), ("cpu", cpu)):
        med = {k: statistics.median(v) for k, v in series.items()}
        click.echo(f"median {label}: with page {med['with page']:.2f} s, without {med['without page']:.2f} s, "
                   f"ratio {med['with page'] / med['without page']:.3f} (target <= 1.05)")


if __name__ == "__main__":  # pragma: no cover
    main()
