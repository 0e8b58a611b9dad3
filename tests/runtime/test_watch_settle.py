"""watch's settle rule (runtime/watching.py): a file is sorted only once it has stopped growing."""

import threading

import pytest

from dermsort.runtime.errors import DermsortError
from dermsort.runtime.scan import Candidate
from dermsort.runtime.watching import SettledFiles, watch_loop


def _cand(path, size, mtime_ns=1):
    return Candidate(path, size, mtime_ns, 1, 1)


def test_a_file_is_ready_only_after_its_size_and_mtime_held_for_settle_seconds(tmp_path):
    files = SettledFiles(settle=2.0)
    a = tmp_path / "a.jpg"
    assert files.ready([_cand(a, 10)], now=0.0) == []        # new: wait
    assert files.ready([_cand(a, 20)], now=1.0) == []        # still growing: the clock restarts
    assert files.ready([_cand(a, 20)], now=2.5) == []        # 1.5 s unchanged
    assert files.ready([_cand(a, 20)], now=3.0) == [_cand(a, 20)]
    assert files.ready([_cand(a, 20, mtime_ns=2)], now=3.1) == []  # rewritten in place: wait again
    assert files.ready([], now=4.0) == [] and files.seen == {}       # gone from the folder: forgotten


def test_sorted_files_that_left_are_forgotten_and_those_left_in_place_are_not(tmp_path):
    files = SettledFiles(settle=0.0)
    kept, moved = tmp_path / "kept.jpg", tmp_path / "moved.jpg"
    kept.write_bytes(b"x")
    files.ready([_cand(kept, 1), _cand(moved, 1)], now=0.0)
    files.forget_gone([_cand(kept, 1), _cand(moved, 1)])
    assert list(files.seen) == [str(kept)]


def test_the_loop_stops_after_max_cycles_and_refuses_a_vanished_folder(tmp_path):
    batches = []
    watch_loop(tmp_path, False, batches.append, threading.Event(), interval=0.0, settle=0.0, max_cycles=2)
    assert batches == []
    with pytest.raises(DermsortError, match="disappeared"):
        watch_loop(tmp_path / "gone", False, batches.append, threading.Event(), 0.0, 0.0, 1)
