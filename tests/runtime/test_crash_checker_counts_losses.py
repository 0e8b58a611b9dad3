"""The crash test's own checker must count real losses (it printed a constant "0 lost" before issue 12)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fault_harness import count_lost, sha256, small_real_images, tree


def test_count_lost_sees_a_missing_and_a_damaged_image(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / ".dermsort").mkdir(parents=True)
    (out / ".dermsort" / "journal.jsonl").write_text("")
    for p in small_real_images(3, 0):
        shutil.copyfile(p, inp / p.name)
    originals = tree(inp)
    assert count_lost(originals, inp, out) == []
    names = sorted(originals)
    (inp / names[0]).unlink()                      # gone, and nowhere in the output
    (inp / names[1]).write_bytes(b"half an image")  # damaged in place
    assert sorted(count_lost(originals, inp, out)) == names[:2]
    assert sha256(inp / names[2]) == originals[names[2]]
