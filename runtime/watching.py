"""``watch``'s loop: sort the files of a folder once they have stopped growing, until asked to stop.

A file is sorted only after its size and modification time stayed the same for ``settle`` seconds:
a camera or a copy over the network writes it in pieces, and a half-written image must never be
decided. The click command (runtime/cli.py) prints and reports what each batch gives; this module
decides when a file is ready.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from .errors import DermsortError
from .scan import Candidate, scan


class SettledFiles:
    """The files seen so far with (size, mtime_ns, when that signature was first seen)."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self.seen: dict[str, tuple[int, int, float]] = {}

    def ready(self, current: Iterable[Candidate], now: float) -> list[Candidate]:
        """The files of ``current`` unchanged for ``settle`` seconds; files no longer present are forgotten."""
        ready: list[Candidate] = []
        names = set()
        for cand in current:
            key = str(cand.path)
            names.add(key)
            sig = (cand.size, cand.mtime_ns)
            prev = self.seen.get(key)
            if prev is None or prev[:2] != sig:
                self.seen[key] = (*sig, now)  # new or still growing: wait until it settles
            elif now - prev[2] >= self.settle:
                ready.append(cand)
        for key in list(self.seen):
            if key not in names:
                del self.seen[key]
        return ready

    def forget_gone(self, sorted_files: Iterable[Candidate]) -> None:
        """Forget the sorted files that left the folder (a file left in place stays known, so it is not re-sorted)."""
        for cand in sorted_files:
            if not cand.path.exists():
                self.seen.pop(str(cand.path), None)


def watch_loop(input_dir: Path, recursive: bool, sort_batch: Callable[[list[Candidate]], None],
               stop: threading.Event, interval: float, settle: float, max_cycles: int | None = None) -> None:
    """Scan ``input_dir`` every ``interval`` s and hand each batch of settled files to ``sort_batch``.

    Ends when ``stop`` is set or after ``max_cycles`` scans; a folder that disappears (deleted,
    unmounted) is an error, not an empty folder.
    """
    files = SettledFiles(settle)
    cycles = 0
    while not stop.is_set():
        now = time.monotonic()
        if not input_dir.is_dir():
            raise DermsortError(f"input folder {input_dir} disappeared (deleted or unmounted); stopped watching")
        ready = files.ready(scan(input_dir, recursive), now)
        if ready:
            sort_batch(ready)
            files.forget_gone(ready)
        cycles += 1
        if max_cycles is not None and cycles >= max_cycles:
            break
        stop.wait(interval)
