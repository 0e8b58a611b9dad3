"""Cheap rendered negatives for the not-dermoscopy gate: things that land in a clinic's image folder.

Screens and documents (text pages, forms, tables, a patient-record-like screenshot), charts, test
patterns, noise, flat-colour and gradient frames, geometric drawings. They are drawn with Pillow from a
seeded generator, so they cost nothing to ship and are the same on every machine. They only ever
*add* to the real non-dermoscopy photos (``ood.csv``): they are never the only evidence, and the
gate's figures are reported on real photos.
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_WORDS = ("patient record date of birth lesion back left arm dermoscopy follow up referral clinic report "
          "histology benign review sensitivity threshold total visit notes allergy none medication name "
          "address phone 2024 2025 2026 mm diameter asymmetric border colour diagnosis plan biopsy").split()


def _colour(rng: random.Random, light: bool | None = None) -> tuple[int, int, int]:
    lo, hi = (170, 255) if light else (0, 120) if light is False else (0, 255)
    return tuple(rng.randint(lo, hi) for _ in range(3))  # type: ignore[return-value]


def _size(rng: random.Random) -> tuple[int, int]:
    return rng.choice([(640, 480), (480, 640), (800, 600), (1024, 768), (512, 512), (600, 800)])


def _text_page(rng: random.Random) -> Image.Image:
    w, h = _size(rng)
    img = Image.new("RGB", (w, h), _colour(rng, light=True))
    draw = ImageDraw.Draw(img)
    y = rng.randint(5, 30)
    ink = _colour(rng, light=False)
    while y < h - 10:
        x = rng.randint(5, 40)
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 14)))
        draw.text((x, y), line, fill=ink)
        y += rng.randint(11, 22)
    return img


def _screenshot(rng: random.Random) -> Image.Image:
    w, h = _size(rng)
    img = Image.new("RGB", (w, h), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w, rng.randint(30, 60)), fill=_colour(rng))
    draw.text((10, 10), "dermsort report - " + rng.choice(_WORDS), fill=(255, 255, 255))
    for _ in range(rng.randint(3, 9)):  # panels, thumbnails and table rows
        x0, y0 = rng.randint(0, w - 60), rng.randint(60, h - 40)
        x1, y1 = min(w, x0 + rng.randint(40, 300)), min(h, y0 + rng.randint(20, 200))
        draw.rectangle((x0, y0, x1, y1), fill=_colour(rng), outline=(200, 200, 200))
        draw.text((x0 + 3, y0 + 3), rng.choice(_WORDS), fill=(0, 0, 0))
    for r in range(rng.randint(4, 14)):
        y = 80 + r * 18
        if y < h:
            draw.line((10, y, w - 10, y), fill=(220, 220, 220))
            draw.text((14, y + 2), " | ".join(rng.choice(_WORDS) for _ in range(4)), fill=(40, 40, 40))
    return img


def _chart(rng: random.Random) -> Image.Image:
    w, h = _size(rng)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.line((40, h - 40, w - 20, h - 40), fill=(0, 0, 0), width=2)
    draw.line((40, 20, 40, h - 40), fill=(0, 0, 0), width=2)
    n = rng.randint(3, 12)
    for i in range(n):
        x0 = 50 + i * (w - 80) // n
        top = rng.randint(30, h - 60)
        draw.rectangle((x0, top, x0 + (w - 80) // n - 6, h - 41), fill=_colour(rng))
    pts = [(40 + i * (w - 60) // 20, rng.randint(30, h - 50)) for i in range(21)]
    draw.line(pts, fill=_colour(rng), width=2)
    return img


def _pattern(rng: random.Random) -> Image.Image:
    w, h = _size(rng)
    cell = rng.randint(8, 80)
    a, b = _colour(rng), _colour(rng)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((xx // cell + yy // cell) % 2).astype(bool)
    arr = np.where(mask[..., None], np.array(a, np.uint8), np.array(b, np.uint8))
    if rng.random() < 0.5:  # colour wheel / bars
        hue = (np.arctan2(yy - h / 2, xx - w / 2) / (2 * np.pi) + 0.5)
        hsv = np.stack([hue * 255, np.full_like(hue, 200), np.full_like(hue, 230)], axis=-1).astype(np.uint8)
        return Image.fromarray(hsv, "HSV").convert("RGB")
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _noise(rng: random.Random) -> Image.Image:
    w, h = _size(rng)
    gen = np.random.default_rng(rng.randrange(2**32))
    if rng.random() < 0.5:
        arr = gen.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        arr = np.clip(gen.normal(rng.randint(60, 200), rng.randint(10, 80), (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 3))) if rng.random() < 0.5 else img


def _gradient(rng: random.Random) -> Image.Image:
    w, h = _size(rng)
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
    line = a[None] * (1 - t[:, None]) + b[None] * t[:, None]
    arr = np.broadcast_to(line[None], (h, w, 3)) if len(t) == w else np.broadcast_to(line[:, None], (h, w, 3))
    gen = np.random.default_rng(rng.randrange(2**32))
    arr = np.clip(arr + gen.normal(0, 6, arr.shape), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _shapes(rng: random.Random) -> Image.Image:
    w, h = _size(rng)
    img = Image.new("RGB", (w, h), _colour(rng))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 25)):
        x0, y0 = rng.randint(-50, w), rng.randint(-50, h)
        x1, y1 = x0 + rng.randint(10, 300), y0 + rng.randint(10, 300)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=_colour(rng))
    return img


KINDS: dict[str, Callable[[random.Random], Image.Image]] = {
    "text-page": _text_page, "screenshot": _screenshot, "chart": _chart, "pattern": _pattern,
    "noise": _noise, "gradient": _gradient, "shapes": _shapes}


def rendered_negatives(n: int, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """``n`` (kind, RGB image) pairs, the kinds in turn, from one seeded generator."""
    rng = random.Random(seed)
    names = list(KINDS)
    return [(names[i % len(names)], KINDS[names[i % len(names)]](rng)) for i in range(n)]
