"""Fault-injection hooks for the crash tests: kill this process at a named step of a placement.

Test hook (tests/fault_harness.py): ``DERMSORT_FAULT_AT="STEP:N[:SIG]"`` sends this process SIGKILL (or SIG,
e.g. TERM) the N-th time it reaches STEP. Steps: tmp_written, intent, link, dir_fsync, done, unlink,
journal_write (dies after writing half of a journal append), recovered, results. Unset (always, outside
tests) it costs one environment lookup per step.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "DERMSORT_FAULT_AT"
FAULT_STEPS = ("tmp_written", "intent", "link", "dir_fsync", "done", "unlink", "journal_write", "recovered",
               "results")
_fault_seen: dict[str, int] = {}


def fault_point(step: str) -> bool:
    """Count ``step``; signal the process at the armed occurrence (only when DERMSORT_FAULT_AT is set)."""
    if fault_armed(step):
        sig = (os.environ.get(FAULT_ENV, "").split(":") + ["", "", ""])[2] or "KILL"
        os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))
    return False


def fault_armed(step: str) -> bool:
    """True exactly once: at the N-th occurrence of ``step`` named by DERMSORT_FAULT_AT=STEP:N."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return False
    name, _, rest = spec.partition(":")
    if name != step:
        return False
    _fault_seen[step] = _fault_seen.get(step, 0) + 1
    try:
        return _fault_seen[step] == int(rest.partition(":")[0] or 1)
    except ValueError:
        return False
