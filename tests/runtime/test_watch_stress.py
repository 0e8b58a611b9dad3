"""``watch --move`` against a dermatoscope-like export program, for >= 100 rounds, with SIGKILLs of watch.

Each round one writer episode, chosen by a seeded RNG: a plain drop; a writer that keeps the file open
and pauses longer than --settle halfway; ``NAME.part`` written, paused, renamed; a complete file
replaced by other bytes of the same size and mtime (renamed over it, like ``unzip -o`` / ``exiftool
-P``); the same rewritten in place (``cp -p``); a file deleted by its owner soon after it appeared.
Every tenth round watch is SIGKILLed and restarted. At the end: nothing lost (every content that was
last in a file the writer left behind is in the output exactly once, byte-identical), nothing partial
or unclassified in the output, no file in benign/ without a benign decision below the threshold, and
results.csv rows == files on disk. ``DERMSORT_STRESS_ROUNDS`` changes the number of rounds.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from fault_harness import read_journal, small_real_images, wait_for
from test_concurrent_writers import _on_disk, _rows, assert_results_match_disk

PY = [sys.executable, "-m", "dermsort.cli"]
ROUNDS = int(os.environ.get("DERMSORT_STRESS_ROUNDS", "100"))
SETTLE = 0.2


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Writer:
    """The export program. Records which contents it left for dermsort (``must``) and every full content
    it ever wrote (``known``): anything else in the output would be a partial or foreign file."""

    def __init__(self, folder: Path, images: list[bytes], rng: random.Random):
        self.folder, self.images, self.rng = folder, images, rng
        self.must: Counter = Counter()
        self.known: set[str] = set()
        self.threads: list[threading.Thread] = []
        self.episodes: Counter = Counter()

    def _pick(self, size: int | None = None) -> bytes:
        data = self.rng.choice(self.images)
        if size is not None:  # other image bytes cut/padded to the same size: same size, other content
            data = (data + b"\0" * size)[:size]
        self.known.add(_digest(data))
        return data

    def episode(self, r: int) -> None:
        kind = self.rng.choice(["plain", "slow-open", "part-rename", "replace", "rewrite", "delete"])
        self.episodes[kind] += 1
        path = self.folder / f"r{r:03d}-{kind}.jpg"
        if kind == "plain":
            data = self._pick()
            tmp = self.folder / f".{path.name}.tmp"
            tmp.write_bytes(data)
            os.rename(tmp, path)
            self.must[_digest(data)] += 1
        elif kind == "slow-open":
            data = self._pick()
            pause = self.rng.uniform(2 * SETTLE, 4 * SETTLE)

            def slow():
                with open(path, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    time.sleep(pause)
                    fh.write(data[len(data) // 2:])
            self._bg(slow)
            self.must[_digest(data)] += 1
        elif kind == "part-rename":
            data = self._pick()
            part = path.with_name(path.name + ".part")
            part.write_bytes(data[:2000])
            time.sleep(self.rng.uniform(SETTLE, 2 * SETTLE))
            with open(part, "ab") as fh:
                fh.write(data[2000:])
            os.rename(part, path)
            self.must[_digest(data)] += 1
        elif kind in ("replace", "rewrite"):
            first = self._pick()
            path.write_bytes(first)
            st = path.stat()
            time.sleep(self.rng.uniform(0.0, 3 * SETTLE))
            second = self._pick(len(first))
            if kind == "replace":
                tmp = self.folder / f".{path.name}.unzip"
                tmp.write_bytes(second)
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.rename(tmp, path)
                self.must[_digest(second)] += 1
            else:
                def rewrite():
                    try:
                        with open(path, "r+b") as fh:  # fails if dermsort already moved it: then nothing to do
                            fh.write(second)
                        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
                    except FileNotFoundError:
                        return
                    self.must[_digest(second)] += 1
                self._bg(rewrite)
            # ``first`` may or may not have been sorted before it was replaced: either is right
        elif kind == "delete":
            data = self._pick()
            path.write_bytes(data)
            time.sleep(self.rng.uniform(0.0, 3 * SETTLE))
            try:
                path.unlink()  # deleted by its owner: may or may not have been sorted first
            except FileNotFoundError:
                pass

    def _bg(self, fn) -> None:
        t = threading.Thread(target=fn)
        t.start()
        self.threads.append(t)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=120)


def _start(inp: Path, out: Path, bundle: Path) -> subprocess.Popen:
    return subprocess.Popen([*PY, "watch", str(inp), "--out", str(out), "--model", str(bundle), "--backend",
                             "onnxruntime", "--move", "--interval", "0.1", "--settle", str(SETTLE),
                             "--batch-size", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_watch_move_with_concurrent_writers_and_sigkills(tiny_bundle, tmp_path, capsys):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    images = [p.read_bytes() for p in small_real_images(24, 0)]
    writer = Writer(inp, images, random.Random(20261129))
    start = time.monotonic()
    kills = 0
    proc = _start(inp, out, tiny_bundle)
    try:
        assert wait_for(lambda: (out / ".dermsort" / "journal.jsonl").exists(), 60), "watch did not start"
        for r in range(ROUNDS):
            writer.episode(r)
            if r % 10 == 9:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                kills += 1
                proc = _start(inp, out, tiny_bundle)
        writer.join()
        visible = lambda: [p for p in inp.iterdir() if not p.name.startswith(".")]  # noqa: E731
        assert wait_for(lambda: not visible(), 180), f"not sorted in time: {sorted(p.name for p in visible())}"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
    # a last run finishes what the last kill may have left (recovery), then the end state is checked
    res = subprocess.run([*PY, "sort", str(inp), "--out", str(out), "--model", str(tiny_bundle), "--backend",
                          "onnxruntime", "--move"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    disk = _on_disk(out)
    placed = Counter(disk.values())
    partial = [d for d, digest in disk.items() if digest not in writer.known]
    lost = {digest: n - placed[digest] for digest, n in writer.must.items() if placed[digest] < n}
    j = read_journal(out)
    with capsys.disabled():
        print(f"\nwatch stress: {ROUNDS} rounds {dict(sorted(writer.episodes.items()))}, {kills} SIGKILLs of watch, "
              f"{len(disk)} files in the output checked, {sum(lost.values())} images lost, {len(partial)} partial or "
              f"foreign, {len(_rows(out))} results.csv rows, {time.monotonic() - start:.0f} s")
    assert not partial, f"partial or unknown content in the output: {partial[:5]}"
    assert not lost, f"LOST: {lost}"
    assert not j.pending and not j.torn_tail
    assert_results_match_disk(out)
    assert not [p for p in inp.iterdir() if not p.name.startswith(".")]
    assert not [p for p in inp.iterdir() if ".dermsort-removing-" in p.name], "a captured source was left behind"
