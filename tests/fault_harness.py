"""Fault-injection harness: run ``dermsort sort`` as a subprocess, kill it (SIGKILL) at a named step
(``DERMSORT_FAULT_AT=STEP:N``, see runtime/faults.py) or after a random delay, and check the
output against the originals.

Two checks:
- ``check_no_loss`` (after every kill): each original is still intact in the input, or has a
  durable done record whose destination holds its exact bytes; every file in benign/ and review/
  belongs to a done or pending (recoverable) placement, never to an aborted or unknown one;
- ``check_final`` (after a run that completed): each original is in the output exactly once,
  byte-identical (sha256); benign/ + review/ hold exactly the done records' destinations; no
  staging copies are left; results.csv lists exactly the done records; the journal has no torn
  line; in copy mode the input is untouched, with --move it is empty.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under ``folder`` (symlinks not followed)."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            if p.is_file() and not p.is_symlink():
                out[os.path.relpath(p, folder)] = sha256(p)
    return out


def small_real_images(n_kaggle: int = 120, n_isic: int = 80) -> list[Path]:
    """Small real dermoscopy JPEGs (300x300 Kaggle, 512x512 ISIC 2020), smallest ISIC files first."""
    kaggle = sorted((DATA / "kaggle-melanoma-sample" / "images").glob("*.jpg"))[:n_kaggle]
    isic = sorted((DATA / "isic2020" / "images").glob("*.jpg"), key=lambda p: (p.stat().st_size, p.name))[:n_isic]
    return kaggle + isic


def make_corpus(folder: Path, n_kaggle: int = 120, n_isic: int = 80, n_dup: int = 30) -> dict[str, str]:
    """A few hundred real images plus duplicates under other names, a subfolder whose names clash
    with the top level, and a few bad files. Returns relpath -> sha256 of every file."""
    folder.mkdir(parents=True, exist_ok=True)
    images = small_real_images(n_kaggle, n_isic)
    for p in images:
        shutil.copyfile(p, folder / p.name)
    sub = folder / "patient 2"
    sub.mkdir()
    for i, p in enumerate(images[:n_dup]):
        # same name as a top-level file (a clash for --recursive), and every third one other content
        src = images[-1 - i] if i % 3 == 0 else p
        shutil.copyfile(src, sub / p.name)
    for i, p in enumerate(images[n_dup:2 * n_dup]):
        shutil.copyfile(p, folder / f"copy {i} of {p.name}")
    first = images[0].read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(first[: len(first) // 2])
    (folder / "notes.jpg").write_bytes(b"not an image, just text\n" * 20)
    return tree(folder)


@dataclass
class Journal:
    intents: dict[str, dict] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    aborted: set[str] = field(default_factory=set)
    torn_tail: bool = False

    @property
    def done_records(self) -> list[dict]:
        return [self.intents[i] for i in self.done]

    @property
    def pending(self) -> list[dict]:
        finished = set(self.done) | self.aborted
        return [r for i, r in self.intents.items() if i not in finished]


def read_journal(out: Path) -> Journal:
    j = Journal()
    path = out / ".dermsort" / "journal.jsonl"
    if not path.exists():
        return j
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    j.torn_tail = end < len(data)
    for line in data[:end].splitlines():
        rec = json.loads(line.decode("utf-8", "surrogateescape"))
        if rec["event"] == "intent":
            j.intents[rec["id"]] = rec
        elif rec["event"] == "done":
            j.done.append(rec["id"])
        elif rec["event"] == "abort":
            j.aborted.add(rec["id"])
    return j


def placed_files(out: Path) -> dict[str, str]:
    found = {}
    for sub in ("benign", "review"):
        if (out / sub).is_dir():
            found.update({f"{sub}/{k}": v for k, v in tree(out / sub).items()})
    return found


def count_lost(originals: dict[str, str], inp: Path, out: Path) -> list[str]:
    """Originals that are neither intact in the input nor placed (intact) with a done record."""
    j = read_journal(out)
    placed = placed_files(out)
    done_by_rel: dict[str, list[dict]] = {}
    for rec in j.done_records:
        done_by_rel.setdefault(rec["relpath"], []).append(rec)
    lost = []
    for rel, digest in originals.items():
        src = inp / rel
        if src.is_file() and sha256(src) == digest:
            continue
        if not [r for r in done_by_rel.get(rel, []) if placed.get(r["dest"]) == digest == r["sha256"]]:
            lost.append(rel)
    return lost


def check_no_loss(originals: dict[str, str], inp: Path, out: Path) -> int:
    """Assert nothing is lost and the output holds nothing unexplained; returns the number lost (0)."""
    lost = count_lost(originals, inp, out)
    assert not lost, f"LOST {len(lost)}: {lost[:5]} neither in the input nor placed with a done record"
    j = read_journal(out)
    placed = placed_files(out)
    done_by_rel: dict[str, list[dict]] = {}
    for rec in j.done_records:
        done_by_rel.setdefault(rec["relpath"], []).append(rec)
    for rel, digest in originals.items():
        src = inp / rel
        if src.is_file() and sha256(src) == digest:
            continue
    live = {r["dest"] for r in j.done_records} | {r["dest"] for r in j.pending if r.get("dest")}
    stray = set(placed) - live
    assert not stray, f"files in the output that no done/pending record explains: {sorted(stray)[:5]}"
    dests = Counter(r["dest"] for r in j.done_records)
    assert all(c == 1 for c in dests.values()), "two done records share one destination"
    return 0


def check_final(originals: dict[str, str], inp: Path, out: Path, move: bool) -> int:
    """The full end state; returns the number of files checked."""
    j = read_journal(out)
    assert not j.torn_tail, "torn journal line left behind"
    assert not j.pending, f"{len(j.pending)} placements neither done nor aborted"
    done = j.done_records
    per_rel = Counter(r["relpath"] for r in done)
    assert set(per_rel) == set(originals), (set(originals) - set(per_rel), set(per_rel) - set(originals))
    assert all(c == 1 for c in per_rel.values()), [k for k, c in per_rel.items() if c > 1]
    placed = placed_files(out)
    assert sorted(placed) == sorted(r["dest"] for r in done), "benign/ + review/ differ from the done records"
    for rec in done:
        assert placed[rec["dest"]] == rec["sha256"] == originals[rec["relpath"]], rec["relpath"]
    assert Counter(placed.values()) == Counter(originals.values())  # every image exactly once, byte-identical
    leftovers = list((out / ".dermsort" / "tmp").glob("*")) if (out / ".dermsort" / "tmp").exists() else []
    assert not leftovers, f"staging files left: {leftovers[:3]}"
    with open(out / "results.csv", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = sorted((r["file"], r["dest"], r["sha256"]) for r in csv.DictReader(fh))
    assert rows == sorted((r["file"], r["dest"], r["sha256"]) for r in done), "results.csv differs from the journal"
    if move:
        assert tree(inp) == {}, f"sources left after --move: {list(tree(inp))[:5]}"
    else:
        assert tree(inp) == originals, "copy mode changed the input"
    return len(originals)


def sort_cmd(inp: Path, out: Path, bundle: Path, move: bool, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "dermsort.cli", "sort", str(inp), "--out", str(out), "--model", str(bundle),
           "--backend", "onnxruntime", "--recursive", "--threads", "1", *extra]
    return cmd + (["--move"] if move else [])


def run_sort(cmd: list[str], fault: str | None = None, kill_after: float | None = None,
             timeout: float = 120) -> int:
    """Run the sorter; returns its exit status (-9 when it was SIGKILLed)."""
    env = dict(os.environ)
    env.pop("DERMSORT_FAULT_AT", None)
    if fault:
        env["DERMSORT_FAULT_AT"] = fault
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"sorter failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return proc.returncode


@dataclass
class CrashStats:
    kills: int = 0
    fault_kills: int = 0
    timed_kills: int = 0
    runs: int = 0
    rounds: int = 0
    files_checked: int = 0
    lost: int = 0
    steps: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def line(self, mode: str) -> str:
        return (f"crash test [{mode}]: {self.kills} SIGKILLs survived ({self.fault_kills} at named steps, "
                f"{self.timed_kills} at random times) in {self.runs} runs over {self.rounds} rounds; "
                f"{self.files_checked} files checked, {self.lost} lost; {self.seconds:.0f} s; "
                f"steps {dict(sorted(self.steps.items()))}")


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """``dermsort sort`` run in-process installs SIGINT/SIGTERM handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def copy_corpus(folder: Path, n: int = 8, offset: int = 0) -> dict[str, str]:
    """``n`` small real images (after skipping ``offset``) copied into ``folder``; its tree afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in small_real_images(n + offset, 0)[offset:]:
        shutil.copyfile(p, folder / p.name)
    return tree(folder)


def sort_json(inp: Path, out: Path, bundle: Path, capsys, *extra: str) -> tuple[int, dict, str]:
    """``dermsort sort --json`` in-process on ONNX Runtime: (exit code, summary or {}, stderr)."""
    from dermsort.cli import main

    capsys.readouterr()
    rc = main(["sort", str(inp), "--out", str(out), "--model", str(bundle), "--backend", "onnxruntime",
               "--workers", "2", "--json", *extra])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if cap.out.strip() else {}), cap.err
