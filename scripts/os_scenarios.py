#!/usr/bin/env python3
"""The sorter's clash, crash, writer and watch scenarios, run on whatever system this Python runs on
(scripts/wine-check.sh runs them with a Windows CPython under Wine). Every scenario ends by checking
that no image was lost or overwritten: each input's sha256 is in OUT exactly once (or, left in place,
still in the input), and files put into OUT by hand are untouched.

    python scripts/os_scenarios.py IMAGES_DIR WORK_DIR [--dermsort PATH]

Prints one line per scenario (PASS / FAIL and what it saw) and a JSON summary; exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXT
                  and ".dermsort" not in p.parts)


def shas(folder: Path) -> list[str]:
    return sorted(sha(p) for p in images_under(folder)) if folder.exists() else []


class Runner:
    def __init__(self, dermsort: list[str], work: Path, sources: list[Path]):
        self.dermsort, self.work, self.sources = dermsort, work, sources
        self.results: list[dict] = []

    def run(self, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*self.dermsort, *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)

    def fresh(self, name: str, n: int, start: int = 0) -> tuple[Path, Path]:
        base = self.work / name
        shutil.rmtree(base, ignore_errors=True)
        inp, out = base / "in", base / "out"
        inp.mkdir(parents=True)
        for src in self.sources[start:start + n]:
            shutil.copy2(src, inp / src.name)
        return inp, out

    def record(self, name: str, ok: bool, **seen) -> None:
        self.results.append({"scenario": name, "ok": ok, **seen})
        print(f"{'PASS' if ok else 'FAIL'} {name}: {json.dumps(seen)}", flush=True)


def nothing_lost(before: list[str], inp: Path, out: Path, extra_out: list[str] = ()) -> tuple[bool, dict]:
    """Every input image is in OUT exactly once or still in the input; OUT holds nothing else but the
    hand-placed ``extra_out`` (each still there)."""
    in_out, left = shas(out), shas(inp)
    rest, hand = list(in_out), True
    for s in extra_out:
        if s in rest:
            rest.remove(s)
        else:
            hand = False
    dupes = len(rest) - len(set(rest))
    ok = sorted(rest + left) == sorted(before) and hand and dupes == 0
    return ok, {"inputs": len(before), "in_out": len(in_out), "left_in_input": len(left), "duplicates": dupes,
                "hand_placed_kept": hand}


def scenario_clash(r: Runner) -> None:
    """Lesion.JPG, lesion.jpg, LESION.jpg (three different images) from three subfolders into one flat
    folder, where a hand-placed lesion.JPG already is: four files, none replaced."""
    base = r.work / "clash"
    shutil.rmtree(base, ignore_errors=True)
    inp, out = base / "in", base / "out"
    names = ["Lesion.JPG", "lesion.jpg", "LESION.jpg"]
    for i, name in enumerate(names):
        (inp / f"sub{i}").mkdir(parents=True)
        shutil.copy2(r.sources[i], inp / f"sub{i}" / name)
    before = shas(inp)
    for folder in ("benign", "review"):
        (out / folder).mkdir(parents=True)
        shutil.copy2(r.sources[3], out / folder / "lesion.JPG")  # put there by hand
    hand = sha(r.sources[3])
    p = r.run("sort", str(inp), "--out", str(out), "--recursive", "--move", "--backend", "onnxruntime",
              "--precision", "fp32")
    ok, seen = nothing_lost(before, inp, out, [hand, hand])
    placed = sorted(p.name for p in images_under(out))
    seen.update(rc=p.returncode, names=placed, hand_placed_copies=shas(out).count(hand))
    r.record("case-insensitive clash never overwrites", ok and p.returncode == 0 and seen["left_in_input"] == 0, **seen)


def scenario_crash(r: Runner, steps: list[str]) -> None:
    """``sort --move`` (copy mode for ``tmp_written``: the step of a staged copy) killed at each step of a
    placement (TerminateProcess on Windows, SIGKILL elsewhere), then run again: every image once in OUT."""
    for step in steps:
        inp, out = r.fresh(f"crash-{step}", 6)
        before = shas(inp)
        mode = [] if step == "tmp_written" else ["--move"]
        args = ["sort", str(inp), "--out", str(out), *mode, "--backend", "onnxruntime", "--precision", "fp32"]
        killed = r.run(*args, "--batch-size", "2", env={"DERMSORT_FAULT_AT": f"{step}:2"})
        again = r.run(*args)
        in_out, left = shas(out), shas(inp)
        ok = in_out == sorted(before) and (left == ([] if mode else sorted(before)))
        seen = {"mode": "move" if mode else "copy", "inputs": len(before), "in_out": len(in_out),
                "left_in_input": len(left), "killed_rc": killed.returncode, "rerun_rc": again.returncode,
                "tmp_left": len(list((out / ".dermsort" / "tmp").glob("*.part")))}
        r.record(f"killed at {step}, re-run: nothing lost", ok and killed.returncode not in (0, 3)
                 and again.returncode == 0, **seen, err=again.stderr.strip()[-300:] if again.returncode else "")


def scenario_writer(r: Runner) -> None:
    """A file another program holds open for writing is left in place (exit 3); once closed, the next run sorts it."""
    inp, out = r.fresh("writer", 4)
    busy = inp / "busy.jpg"
    shutil.copy2(r.sources[10], busy)
    before = shas(inp)
    with open(busy, "ab"):  # another program still writing it
        first = r.run("sort", str(inp), "--out", str(out), "--move", "--backend", "onnxruntime", "--precision", "fp32")
        kept = busy.exists() and sha(busy) == sha(r.sources[10])
    second = r.run("sort", str(inp), "--out", str(out), "--move", "--backend", "onnxruntime", "--precision", "fp32")
    ok, seen = nothing_lost(before, inp, out)
    seen.update(first_rc=first.returncode, kept_while_open=kept, second_rc=second.returncode,
                first_said=[line for line in first.stdout.splitlines() + first.stderr.splitlines()
                            if "busy.jpg" in line][:2])
    r.record("file open for writing is left, sorted once closed", ok and first.returncode == 3 and kept
             and second.returncode == 0 and not busy.exists(), **seen)


def scenario_watch(r: Runner) -> None:
    """``watch --move`` sorts files as they arrive; it is then killed outright, and a sort finishes the rest."""
    inp, out = r.fresh("watch", 0)
    inp.mkdir(exist_ok=True)
    cmd = [*r.dermsort, "watch", str(inp), "--out", str(out), "--move", "--backend", "onnxruntime", "--precision",
           "fp32", "--interval", "0.3", "--settle", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    arrived = r.sources[20:32]
    try:
        for src in arrived:
            shutil.copy2(src, inp / src.name)
            time.sleep(0.2)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(shas(out)) < len(arrived):
            time.sleep(0.5)
        sorted_by_watch = len(shas(out))
    finally:
        proc.kill()  # TerminateProcess on Windows: as abrupt as SIGKILL
        tail = proc.communicate(timeout=60)[0][-400:]
    again = r.run("sort", str(inp), "--out", str(out), "--move", "--backend", "onnxruntime", "--precision", "fp32")
    before = sorted(sha(p) for p in arrived)
    ok, seen = nothing_lost(before, inp, out)
    seen.update(sorted_by_watch=sorted_by_watch, rerun_rc=again.returncode)
    r.record("watch --move sorts arrivals; killed, nothing lost", ok and sorted_by_watch == len(arrived)
             and again.returncode == 0, **seen, watch_tail=tail if not ok else "")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("images", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--dermsort", default="")
    ap.add_argument("--steps", default="tmp_written,intent,link,dir_fsync,done,unlink")
    a = ap.parse_args()
    exe = a.dermsort or shutil.which("dermsort") or str(Path(sysconfig.get_path("scripts")) / "dermsort")
    sources = images_under(a.images)
    if len(sources) < 32:
        print(f"need at least 32 images in {a.images}", file=sys.stderr)
        return 2
    r = Runner([exe], a.work, sources)
    print(f"system: {sys.platform} {sys.version.split()[0]}; dermsort: {exe}", flush=True)
    scenario_clash(r)
    scenario_writer(r)
    scenario_crash(r, a.steps.split(","))
    scenario_watch(r)
    failed = [x["scenario"] for x in r.results if not x["ok"]]
    print(json.dumps({"platform": sys.platform, "passed": len(r.results) - len(failed), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
