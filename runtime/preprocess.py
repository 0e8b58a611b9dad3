"""The one preprocessing path from file bytes to the model's input tensor.

Training reuses these functions (augmentations run between ``open_image`` and ``to_array``), so
every backend sees exactly the pixels the model was trained on.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image, ImageOps

from .metadata import PreprocessSpec

#: Pillow itself refuses > 2x its default limit; we refuse earlier, before any pixel is decoded.
MAX_PIXELS = 100_000_000
MIN_SIDE = 64
#: Formats a dermatoscope or its export software writes; anything else goes to review/.
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "TIFF", "BMP", "WEBP"}
EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "MPO": {".jpg", ".jpeg", ".mpo"},
    "PNG": {".png"},
    "TIFF": {".tif", ".tiff"},
    "BMP": {".bmp"},
    "WEBP": {".webp"},
}
#: every extension the scanner treats as "meant to be an image"
IMAGE_EXTENSIONS = sorted({e for exts in EXTENSIONS.values() for e in exts})
# Our own MAX_PIXELS check below refuses bombs before decoding (thread-safe, unlike catch_warnings
# in decode threads); Pillow's warning for 89M..178M pixels would only add noise on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow warns about damaged metadata it skips (corrupt EXIF, tags past the end of the file): the pixels
# decide, and a damaged image fails decoding with its own reason; the warnings would only leak to stderr.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\..*)?$")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


class UnreadableImage(Exception):
    """The bytes cannot be decoded into an image; the message is the reason shown in the journal."""


@dataclass
class ImageInfo:
    """What was learned while decoding; ``concerns`` non-empty means the image must go to review/."""

    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    concerns: list[str] = field(default_factory=list)


def open_image(data: bytes | BinaryIO, spec: PreprocessSpec, name: str = "") -> tuple[Image.Image, ImageInfo]:
    """Decode bytes (or a binary file opened for reading, for large files) by content into an
    upright RGB image, shrunk by the power of two ``reduction_factor`` chooses: JPEG while decoding
    (DCT scaling, the path the model was trained through), every other format by the same factor
    with ``Image.reduce`` (box averaging) right after decoding, so that all formats reach the
    network through the same reduction.

    Raises UnreadableImage for anything that cannot be decoded safely; returns concerns for images
    that decode but should not be trusted to reach benign/ (odd colour modes, tiny, blank...).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        if not data:
            raise UnreadableImage("empty file (0 bytes)")
        fp: BinaryIO = io.BytesIO(data)
    else:
        fp = data
    try:
        # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse anything above
        # MAX_PIXELS ourselves (below), before a pixel is decoded, so the warning adds nothing.
        # (catch_warnings is process-global, so it is not used in these decode threads.)
        img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"decompression bomb refused ({exc})") from None
    except Exception:
        raise UnreadableImage("not a readable image (unknown or corrupt format)") from None
    info = ImageInfo(format=img.format or "", mode=img.mode, width=img.width, height=img.height)
    if info.width * info.height > MAX_PIXELS:
        raise UnreadableImage(f"decompression bomb refused ({info.width}x{info.height} declared pixels > {MAX_PIXELS})")
    if info.format not in SUPPORTED_FORMATS:
        raise UnreadableImage(f"unsupported image format {info.format or 'unknown'}")
    ext = os.path.splitext(name)[1].lower()
    if name and ext and ext not in EXTENSIONS.get(info.format, set()):
        info.concerns.append(f"extension {ext} does not match content ({info.format})")
    if getattr(img, "n_frames", 1) > 1 and info.format not in ("MPO",):
        info.concerns.append(f"multi-frame image ({img.n_frames} frames)")
    if min(info.width, info.height) < MIN_SIDE:
        info.concerns.append(f"image too small ({info.width}x{info.height}, minimum side {MIN_SIDE} px)")
    if info.mode not in ("RGB",):
        info.concerns.append(f"unexpected colour mode {info.mode} (dermoscopy images are 8-bit RGB)")
    factor = reduction_factor(info.width, info.height, spec.resize_shorter)
    try:
        if info.format in ("JPEG", "MPO") and info.mode in ("RGB", "L", "CMYK", "YCbCr"):
            # DCT-domain downscaling: decodes 1/2..1/8 of the pixels; never below the size we need.
            img.draft(img.mode, (spec.resize_shorter, spec.resize_shorter))
        img.load()
        drafted = img.size != (info.width, info.height)
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        if factor > 1 and not drafted:
            # PNG/TIFF/BMP/WEBP (or a JPEG Pillow could not draft): the reduction JPEG got while decoding
            img = img.reduce(factor)
    except UnreadableImage:
        raise
    except Exception as exc:  # truncated data, broken chunks, bad EXIF...
        raise UnreadableImage(f"corrupt or truncated image ({_short(exc)})") from None
    return img, info


def reduction_factor(width: int, height: int, shorter: int) -> int:
    """The power of two (1, 2, 4 or 8) an image is shrunk by before resizing: the factor Pillow's JPEG
    ``draft`` picks for a request of ``shorter`` x ``shorter`` (largest that keeps both sides >= it)."""
    scale = min(width // max(shorter, 1), height // max(shorter, 1))
    return next((s for s in (8, 4, 2) if scale >= s), 1)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) or 1.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (0, 0, 0))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize the shorter side to ``spec.resize_shorter`` (aspect kept), then centre-crop to ``input_size``."""
    w, h = img.size
    scale = spec.resize_shorter / min(w, h)
    nw, nh = max(spec.input_size, round(w * scale)), max(spec.input_size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _RESAMPLE[spec.interpolation])
    left, top = (nw - spec.input_size) // 2, (nh - spec.input_size) // 2
    return img.crop((left, top, left + spec.input_size, top + spec.input_size))


COLOR_CONSTANCY = ("none", "shades_of_gray")


def shades_of_gray(planes: np.ndarray, power: float = 6.0) -> np.ndarray:
    """Shades of Gray colour constancy on a contiguous 3xHxW float32 array of 0-255 values, in place
    (returns it).

    The illuminant is estimated per channel as the Minkowski ``power``-mean of its values; each
    channel is scaled so that the estimate becomes grey (unit vector times sqrt(3)), then clipped
    to 0-255. Power 6 is what Barata et al. 2015 and the ISIC 2018/2019 winners used.
    Per-channel work runs on whole contiguous planes with a scalar: numpy broadcasting a 3-vector
    over the last axis of HxWx3 ran an inner loop of length 3 and cost ~15x more per element (issue 26).
    """
    flat = planes.reshape(3, -1)
    x = flat * np.float32(1.0 / 255.0)
    if power == 6.0:  # the usual power, by multiplication (~5x cheaper than np.power), in place
        np.multiply(x, x, out=x)
        powered = x * x
        np.multiply(powered, x, out=powered)
    else:
        powered = np.power(x, np.float32(power))
    # per-channel mean accumulated in float64 (a matrix-vector product: the same sum to ~1e-16)
    illuminant = np.power(powered.astype(np.float64) @ np.ones(flat.shape[1]) / flat.shape[1], 1.0 / power)
    norm = float(np.sqrt(np.sum(illuminant ** 2)))
    if norm <= 1e-6 or not np.all(illuminant > 1e-6):
        return planes  # a black or single-colour frame: nothing to estimate
    gain = (1.0 / (illuminant / norm * np.sqrt(3.0))).astype(np.float32)
    for c in range(3):
        np.multiply(flat[c], gain[c], out=flat[c])
    return np.clip(planes, 0.0, 255.0, out=planes)


def to_array(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB image of ``input_size`` -> (colour constancy, if the spec asks) -> normalised float32 CHW array."""
    planes = np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1))  # a new array
    if spec.color_constancy == "shades_of_gray":
        planes = shades_of_gray(planes, spec.color_constancy_power)
    elif spec.color_constancy != "none":
        raise ValueError(f"unknown colour constancy {spec.color_constancy!r} (known: {', '.join(COLOR_CONSTANCY)})")
    scale, mean, std = np.float32(spec.scale), np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    for c in range(3):  # per contiguous plane with a scalar (see shades_of_gray)
        plane = planes[c]
        if spec.scale != 1.0:  # x / 1.0 is x: skip a pass over the image
            np.divide(plane, scale, out=plane)
        np.subtract(plane, mean[c], out=plane)
        np.divide(plane, std[c], out=plane)
    return planes


def preprocess(data: bytes | BinaryIO, spec: PreprocessSpec, name: str = "",
               on_image: Callable[[Image.Image], None] | None = None) -> tuple[np.ndarray, ImageInfo]:
    """File bytes -> (CHW float32 input tensor, ImageInfo with any concerns).

    ``on_image`` (e.g. the review page's thumbnail writer) is handed the decoded, upright RGB image
    before it is resized, so that it needs no second decode; it must not modify it.
    """
    img, info = open_image(data, spec, name)
    if on_image is not None:
        on_image(img)
    img = resize_and_crop(img, spec)
    small = np.asarray(img.resize((32, 32)), dtype=np.float32).reshape(-1, 3)
    # per channel: a uniformly coloured frame (skin-tone, over-exposed) has a large spread *across*
    # channels but none within one
    if float(small.std(axis=0).max()) < 2.0:
        info.concerns.append("blank or uniform image (no lesion visible)")
    return to_array(img, spec), info


def preprocess_file(path: str | os.PathLike, spec: PreprocessSpec) -> tuple[np.ndarray, ImageInfo]:
    with open(path, "rb") as fh:
        return preprocess(fh.read(), spec, os.fspath(path))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]
