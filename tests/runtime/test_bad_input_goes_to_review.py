"""Bad and hostile input, built from real images: each case goes to review/ with a reason (never
benign/) or, when it cannot be read or is not a file, stays where it is and is listed, and no case
stops the run. The table in docs/RELIABILITY.md lists the same cases.

The run uses --threshold 1.0, so every image that passes the input checks would be benign: a case
in review/ is there because of a check, not because of the model."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import labelled
from dermsort.cli import main
from dermsort.runtime import placement as placement_mod
from dermsort.runtime import reading as reading_mod
from dermsort.runtime import sorter as sorter_mod
from dermsort.runtime.metadata import PreprocessSpec
from dermsort.runtime.preprocess import UnreadableImage, open_image, preprocess
from fault_harness import read_journal, restore_signal_handlers, sha256, small_real_images, tree  # noqa: F401

REAL_JPEG = labelled("ham10000-sample", "test", 1)[0]["path"]


def _img() -> Image.Image:
    return Image.open(REAL_JPEG).convert("RGB")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header declares width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(_img(), "JPEG", quality=95, exif=exif.tobytes())


def _sixteen_bit() -> bytes:
    arr = (np.asarray(_img().convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return _save(Image.fromarray(arr), "PNG")


def _multi_frame_tiff() -> bytes:
    img = _img()
    return _save(img, "TIFF", save_all=True, append_images=[img.rotate(90)])


#: name -> (bytes builder, expected reason fragment). Every one must end in review/.
CASES = {
    "zero-byte.jpg": (lambda: b"", "empty file"),
    "truncated.jpg": (lambda: Path(REAL_JPEG).read_bytes()[: Path(REAL_JPEG).stat().st_size // 3], "truncated"),
    "truncated.png": (lambda: _save(_img(), "PNG")[:40_000], "truncated"),
    "bad-crc.png": (lambda: (lambda b: b[:40] + bytes([b[40] ^ 0xFF]) + b[41:])(_save(_img(), "PNG")), "corrupt"),
    "text.jpg": (lambda: b"Patient notes: lesion on left shoulder\n" * 50, "not a readable image"),
    "zip.png": (lambda: b"PK\x03\x04" + os.urandom(2000), "not a readable image"),
    "html.jpeg": (lambda: b"<!doctype html><html><body>404 not found</body></html>", "not a readable image"),
    "jpeg-named.png": (lambda: Path(REAL_JPEG).read_bytes(), "does not match content"),
    "png-named.jpg": (lambda: _save(_img(), "PNG"), "does not match content"),
    "jpeg-named.txt": (lambda: Path(REAL_JPEG).read_bytes(), "does not match content"),
    "gif-named.jpg": (lambda: _save(_img(), "GIF"), "unsupported image format GIF"),
    "bomb-100k.png": (lambda: bomb_png(100_000, 100_000), "decompression bomb"),
    "bomb-12k.png": (lambda: bomb_png(12_000, 12_000), "decompression bomb"),
    "grayscale.jpg": (lambda: _save(_img().convert("L"), "JPEG"), "colour mode L"),
    "cmyk.jpg": (lambda: _save(_img().convert("CMYK"), "JPEG"), "colour mode CMYK"),
    "sixteen-bit.png": (_sixteen_bit, "colour mode I;16"),
    "alpha.png": (lambda: _save(_img().convert("RGBA"), "PNG"), "colour mode RGBA"),
    "palette.png": (lambda: _save(_img().convert("P"), "PNG"), "colour mode P"),
    "tiny.jpg": (lambda: _save(_img().resize((40, 30)), "JPEG"), "too small"),
    "blank.jpg": (lambda: _save(Image.new("RGB", (300, 300), (180, 120, 110)), "JPEG"), "blank or uniform"),
    "two-pages.tif": (_multi_frame_tiff, "multi-frame"),
}


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (build, _) in CASES.items():
        (folder / name).write_bytes(build())
    # controls: valid images, with awkward names, which must reach benign/ at threshold 1.0
    for p, name in zip(small_real_images(4, 0), ["plain.jpg", "with spaces and ünïcödé é.jpg",
                                                 "new\nline.jpg", "x" * 251 + ".jpg"]):
        shutil.copyfile(p, folder / name)
    (folder / os.fsdecode(b"latin1-l\xe9sion.jpg")).write_bytes(small_real_images(5, 0)[4].read_bytes())
    (folder / "rotated-exif6.jpg").write_bytes(_exif_jpeg(6))
    return folder


def _sort_json(folder: Path, out: Path, bundle: Path, capsys, *extra: str) -> tuple[int, dict, str]:
    capsys.readouterr()
    rc = main(["sort", str(folder), "--out", str(out), "--model", str(bundle), "--backend", "onnxruntime",
               "--threshold", "1.0", "--workers", "2", "--json", *extra])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if cap.out.strip() else {}), cap.err


def test_every_bad_case_goes_to_review_with_a_reason_and_the_run_goes_on(tiny_bundle, hostile_folder, tmp_path,
                                                                         capsys):
    originals = tree(hostile_folder)
    out = tmp_path / "out"
    rc, summary, err = _sort_json(hostile_folder, out, tiny_bundle, capsys)
    assert rc == 0, err
    assert summary["sorted"] == len(originals) and not summary["left_in_place"]
    j = read_journal(out)
    by_name = {Path(r["file"]).name: r for r in j.done_records}
    assert len(by_name) == len(originals)
    for name, (_, reason) in CASES.items():
        rec = by_name[name]
        assert rec["decision"] == "review" and rec["dest"].startswith("review/"), (name, rec["reason"])
        assert reason in rec["reason"], (name, rec["reason"])
        assert sha256(out / rec["dest"]) == originals[name]  # bytes kept exactly, even for junk
    controls = [n for n in by_name if n not in CASES]
    assert len(controls) == 6
    for name in controls:
        rec = by_name[name]
        assert rec["decision"] == "benign", (name, rec["reason"])
        assert sha256(out / rec["dest"]) == originals[name]
        assert "\n" not in rec["dest"] and len(os.fsencode(Path(rec["dest"]).name)) <= 255
    assert by_name["new\nline.jpg"]["dest"] == "benign/new_line.jpg"  # journal maps original -> final name
    print(f"\nbad-input cases: {len(CASES)} routed to review/, {len(controls)} awkward-name controls to benign/")


def test_bomb_is_refused_before_decoding():
    import time

    start = time.perf_counter()
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        preprocess(bomb_png(100_000, 100_000), PreprocessSpec())
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        preprocess(bomb_png(12_000, 12_000), PreprocessSpec())
    assert time.perf_counter() - start < 1.0  # nothing was allocated or decoded


@pytest.mark.parametrize("orientation,transpose", [
    (2, Image.Transpose.FLIP_LEFT_RIGHT), (3, Image.Transpose.ROTATE_180), (4, Image.Transpose.FLIP_TOP_BOTTOM),
    (5, Image.Transpose.TRANSPOSE), (6, Image.Transpose.ROTATE_270), (7, Image.Transpose.TRANSVERSE),
    (8, Image.Transpose.ROTATE_90)])
def test_exif_orientation_is_applied(orientation, transpose):
    data = _exif_jpeg(orientation)
    spec = PreprocessSpec(resize_shorter=10_000)  # no JPEG draft: full decode, pixel-exact comparison
    decoded, info = open_image(data, spec, "r.jpg")
    raw = Image.open(io.BytesIO(data)).convert("RGB")  # the stored pixels, orientation not applied
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(raw.transpose(transpose)))
    assert info.concerns == []
    # and through the whole preprocessing (with the JPEG draft), the tensor is the rotated one
    spec = PreprocessSpec(input_size=64, resize_shorter=64)
    upright = _save(raw.transpose(transpose), "JPEG", quality=95)
    a, _ = preprocess(data, spec, "r.jpg")
    b, _ = preprocess(upright, spec, "u.jpg")
    assert np.abs(a - b).mean() < 0.05 < np.abs(a - preprocess(_save(raw, "JPEG", quality=95), spec)[0]).mean()


# ---------------------------------------------------------------------------------------- unreadable
def _deny(monkeypatch, victim: Path) -> None:
    real_open = os.open

    def fake_open(path, flags, *a, **kw):
        if os.fspath(path) == os.fspath(victim):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(sorter_mod.os, "open", fake_open)


@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_unreadable_file_never_stops_the_run(tiny_bundle, tmp_path, capsys, monkeypatch, move):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in small_real_images(5, 0):
        shutil.copyfile(p, folder / p.name)
    victim = sorted(folder.iterdir())[2]
    _deny(monkeypatch, victim)
    out = tmp_path / "out"
    rc, summary, err = _sort_json(folder, out, tiny_bundle, capsys, *(["--move"] if move else []))
    # a file left in place is a distinct exit code (3), so a script does not wipe the card
    assert rc == (0 if move else 3), err
    if move:
        # same file system: the unreadable file is moved by its name (hard link) into review/
        assert summary["sorted"] == 5 and not victim.exists()
        rec = [r for r in read_journal(out).done_records if r["file"] == str(victim)][0]
        assert rec["decision"] == "review" and "permission denied" in rec["reason"]
    else:
        # copy mode cannot copy what it cannot read: left in place and listed, the rest sorted
        assert summary["sorted"] == 4 and victim.exists()
        assert summary["left_in_place"][0]["file"] == str(victim)
        assert "permission denied" in summary["left_in_place"][0]["reason"]


def test_unreadable_file_real_chmod(tiny_bundle, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading (the monkeypatched "
                    "PermissionError variant covers this)")
    folder = tmp_path / "in"
    folder.mkdir()
    for p in small_real_images(3, 0):
        shutil.copyfile(p, folder / p.name)
    victim = sorted(folder.iterdir())[0]
    victim.chmod(0)
    rc, summary, err = _sort_json(folder, tmp_path / "out", tiny_bundle, capsys)
    victim.chmod(0o644)
    assert rc == 0 and summary["sorted"] == 2 and summary["left_in_place"][0]["file"] == str(victim)


# ---------------------------------------------------------------------------------------- symlinks, fifos
def test_symlinks_are_never_followed(tiny_bundle, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "other-patient.jpg"
    shutil.copyfile(small_real_images(1, 0)[0], secret)
    (outside / "sub").mkdir()
    shutil.copyfile(small_real_images(2, 0)[1], outside / "sub" / "deep.jpg")
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(small_real_images(3, 0)[2], folder / "real.jpg")
    (folder / "link.jpg").symlink_to(secret)
    (folder / "linkdir").symlink_to(outside / "sub", target_is_directory=True)
    (folder / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(folder / "pipe.jpg")  # opening it would block a naive reader forever
    out = tmp_path / "out"
    rc, summary, err = _sort_json(folder, out, tiny_bundle, capsys, "--recursive", "--move")
    assert rc == 0, err
    assert summary["sorted"] == 1
    ignored = {Path(i["file"]).name: i["reason"] for i in summary["ignored"]}
    assert {"link.jpg", "linkdir", "dangling.jpg", "pipe.jpg"} <= set(ignored)
    assert "not followed" in ignored["link.jpg"] and "regular" in ignored["pipe.jpg"]
    assert secret.is_file() and (outside / "sub" / "deep.jpg").is_file()  # targets untouched
    assert (folder / "link.jpg").is_symlink()  # the links themselves stay too
    assert set(tree(out / "benign")) | set(tree(out / "review")) == {"real.jpg"}


def test_file_swapped_for_a_symlink_after_the_scan_is_not_followed(tiny_bundle, tmp_path):
    """Time-of-check/time-of-use: the scan saw a file, the decoder finds a symlink: O_NOFOLLOW."""
    from dermsort.runtime.bundle import load_bundle
    from dermsort.runtime.engine import open_backend
    from dermsort.runtime.sorter import SortOptions, Sorter, scan

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    secret = tmp_path / "secret.jpg"
    shutil.copyfile(small_real_images(1, 0)[0], secret)
    shutil.copyfile(secret, folder / "a.jpg")
    files = scan(folder, False)
    (folder / "a.jpg").unlink()
    (folder / "a.jpg").symlink_to(secret)
    bundle, _ = load_bundle(tiny_bundle)
    sorter = Sorter(folder, SortOptions(out=out, move=True), open_backend(bundle, "onnxruntime"))
    sorter.open()
    try:
        summary = sorter.run(files)
    finally:
        sorter.close()
    assert summary.sorted == 0 and "symbolic link" in summary.left_in_place[0]["reason"]
    assert tree(out / "review") == {} and secret.is_file() and (folder / "a.jpg").is_symlink()


# ---------------------------------------------------------------------------------------- files in flux
def test_file_changing_while_read_is_left_for_later(tmp_path, monkeypatch):
    path = tmp_path / "growing.jpg"
    data = Path(small_real_images(1, 0)[0]).read_bytes()
    path.write_bytes(data[:5000])
    real_read = os.pread
    grown = []

    def read_and_grow(fd, n, offset):  # the camera appends once while we read
        block = real_read(fd, n, offset)
        if block and not grown:
            grown.append(True)
            with open(path, "ab") as fh:
                fh.write(data[5000:6000])
        return block

    monkeypatch.setattr(reading_mod.os, "pread", read_and_grow)
    st = path.stat()
    d = reading_mod.decode_one(sorter_mod.Candidate(path, st.st_size, st.st_mtime_ns), PreprocessSpec())
    assert "changed while being read" in d.skip and d.data is None


def test_vanished_file_is_skipped_not_fatal(tmp_path):
    d = reading_mod.decode_one(sorter_mod.Candidate(tmp_path / "gone.jpg", 10, 0), PreprocessSpec())
    assert "vanished" in d.skip


@pytest.mark.parametrize("move", [False, True], ids=["copy", "move-other-fs"])
def test_large_files_are_streamed_not_held_in_memory(tiny_bundle, tmp_path, capsys, monkeypatch, move):
    """Files above MAX_IN_MEMORY are hashed, decoded and copied by streaming (lowered here to 1 KiB)."""
    monkeypatch.setattr(reading_mod, "MAX_IN_MEMORY", 1024)
    if move:
        monkeypatch.setattr(placement_mod.Placer, "can_link_source", lambda self, d: False)
    folder = tmp_path / "in"
    folder.mkdir()
    for p in small_real_images(6, 0):
        shutil.copyfile(p, folder / p.name)
    (folder / "junk.jpg").write_bytes(os.urandom(5000))
    originals = tree(folder)
    out = tmp_path / "out"
    rc, summary, err = _sort_json(folder, out, tiny_bundle, capsys, *(["--move"] if move else []))
    assert rc == 0, err
    assert summary["sorted"] == 7
    placed = {**tree(out / "benign"), **tree(out / "review")}
    assert sorted(placed.values()) == sorted(originals.values())
    assert tree(out / "review") == {"junk.jpg": originals["junk.jpg"]}
    assert tree(folder) == ({} if move else originals)


def test_dermsort_subprocess_survives_the_hostile_folder(tiny_bundle, hostile_folder, tmp_path):
    """The installed console script, not just the API: exit 0, nothing on stderr but warnings."""
    os.mkfifo(hostile_folder / "fifo.jpg")
    res = subprocess.run([sys.executable, "-m", "dermsort.cli", "sort", str(hostile_folder), "--out",
                          str(tmp_path / "o"), "--model", str(tiny_bundle), "--backend", "onnxruntime",
                          "--threshold", "1.0"], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert b"Traceback" not in res.stderr
    assert len(tree(tmp_path / "o" / "review")) == len(CASES)
