"""Training images through the runtime's own preprocessing, with augmentations on the decoded image.

file bytes -> runtime ``open_image`` (decode by content, EXIF, RGB, JPEG draft) -> [augment] ->
runtime ``resize_and_crop`` -> runtime ``to_array``. With augmentations off, a sample is exactly
what ``dermsort.runtime.preprocess.preprocess`` gives the deployed model.
"""

from __future__ import annotations

import io
import logging
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from dermsort.runtime.metadata import PreprocessSpec
from dermsort.runtime.preprocess import open_image, resize_and_crop, to_array

log = logging.getLogger(__name__)


@dataclass
class Augment:
    """Augmentations suited to dermoscopy: lesions have no up/down, so any flip or rotation is valid;
    colour varies with the dermatoscope and lighting but hue carries diagnostic signal, so it moves little."""

    flip: bool = True
    rotate90: bool = True
    #: extra free rotation (degrees, either way) applied with ``rotate_p``
    rotate_degrees: float = 20.0
    rotate_p: float = 0.3
    #: random crop of this share of the area (then the runtime resize/crop), aspect ratio range
    crop_scale: tuple[float, float] = (0.45, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.15
    hue: float = 0.02
    # ---- the camera (off by default; ``CAMERA_AUGMENT`` turns them on): make the device unlearnable
    #: per-channel gain in [1 - wb, 1 + wb]: another white balance or light
    white_balance: float = 0.0
    #: Gaussian blur (radius 0.3-1.5 px) with this probability: focus, motion, another lens
    blur_p: float = 0.0
    #: JPEG re-compression at quality 40-95 with this probability: another export pipeline
    jpeg_p: float = 0.0
    #: down-scaling to 30-80 % and back with this probability: another sensor resolution
    rescale_p: float = 0.0
    #: a dark vignette (the dermatoscope's round field of view) with this probability
    vignette_p: float = 0.0

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        from torchvision.transforms import functional as F

        if self.crop_scale[0] < 1.0:
            img = img.crop(_random_box(img.size, self.crop_scale, self.crop_ratio, rng))
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rotate90:
            turns = rng.randrange(4)
            if turns:
                img = img.transpose([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                     Image.Transpose.ROTATE_270][turns - 1])
        if self.rotate_degrees and rng.random() < self.rotate_p:
            img = img.rotate(rng.uniform(-self.rotate_degrees, self.rotate_degrees), Image.Resampling.BILINEAR)
        if self.brightness:
            img = F.adjust_brightness(img, rng.uniform(1 - self.brightness, 1 + self.brightness))
        if self.contrast:
            img = F.adjust_contrast(img, rng.uniform(1 - self.contrast, 1 + self.contrast))
        if self.saturation:
            img = F.adjust_saturation(img, rng.uniform(1 - self.saturation, 1 + self.saturation))
        if self.hue:
            img = F.adjust_hue(img, rng.uniform(-self.hue, self.hue))
        return self._camera(img, rng)

    def _camera(self, img: Image.Image, rng: random.Random) -> Image.Image:
        from PIL import ImageFilter

        if self.rescale_p and rng.random() < self.rescale_p:
            f = rng.uniform(0.3, 0.8)
            size = img.size
            img = img.resize((max(8, round(size[0] * f)), max(8, round(size[1] * f))), Image.Resampling.BILINEAR)
            img = img.resize(size, Image.Resampling.BILINEAR)
        if self.blur_p and rng.random() < self.blur_p:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
        if self.white_balance or (self.vignette_p and rng.random() < self.vignette_p):
            arr = np.asarray(img, dtype=np.float32)
            if self.white_balance:
                arr = arr * np.array([rng.uniform(1 - self.white_balance, 1 + self.white_balance) for _ in range(3)],
                                     np.float32)
            if self.vignette_p and (not self.white_balance or rng.random() < self.vignette_p):
                h, w = arr.shape[:2]
                yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
                r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
                edge = rng.uniform(0.75, 1.1)
                arr = arr * np.clip(1.0 - np.clip(r - edge, 0, None) / 0.25, 0.0, 1.0)[..., None]
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        if self.jpeg_p and rng.random() < self.jpeg_p:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=rng.randint(40, 95))
            img = Image.open(io.BytesIO(buf.getvalue()))
            img.load()
        return img


#: ``--camera-augment``: the camera-robustness augmentations of model v3 (issue 28, lever 2)
CAMERA_AUGMENT: dict[str, float] = {"white_balance": 0.12, "blur_p": 0.2, "jpeg_p": 0.3, "rescale_p": 0.25,
                                    "vignette_p": 0.15}


def _random_box(size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
                rng: random.Random) -> tuple[int, int, int, int]:
    width, height = size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    return 0, 0, width, height


class ImageCache:
    """Decoded images (after the runtime's JPEG draft, so already small) kept in memory.

    Decoding is the costliest CPU step per sample; every epoch after the first then skips it.
    """

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec
        self._images: dict[str, Image.Image] = {}

    def get(self, path: str) -> Image.Image:
        img = self._images.get(path)
        if img is None:
            img = self._images[path] = self._decode(path)
        return img

    def _decode(self, path: str) -> Image.Image:
        with open(path, "rb") as fh:
            img, _ = open_image(fh.read(), self.spec, path)
        return img

    def warm(self, paths: Sequence[str], threads: int = 2) -> None:
        """Decode ``paths`` up front (Pillow releases the GIL while decoding, so threads help)."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._images]
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for path, img in zip(todo, pool.map(self._decode, todo)):
                self._images[path] = img

    def __len__(self) -> int:
        return len(self._images)

    def nbytes(self) -> int:
        return sum(img.width * img.height * 3 for img in self._images.values())


class DermoscopyDataset:
    """(CHW float32 array, target) pairs; a torch ``Dataset`` by protocol (``__len__``/``__getitem__``)."""

    def __init__(self, paths: Sequence[str], targets: Sequence[int], spec: PreprocessSpec,
                 augment: Augment | None = None, cache: ImageCache | None = None, seed: int = 0):
        if len(paths) != len(targets):
            raise ValueError("paths and targets differ in length")
        self.paths = list(paths)
        self.targets = [int(t) for t in targets]
        self.spec = spec
        self.augment = augment
        self.cache = cache or ImageCache(spec)
        self.seed = seed
        self._calls = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        img = self.cache.get(self.paths[index])
        if self.augment is not None:
            # one reproducible stream per (seed, call) keeps runs repeatable without global state
            self._calls += 1
            img = self.augment(img, random.Random((self.seed * 1_000_003 + self._calls) * 7919 + index))
        return to_array(resize_and_crop(img, self.spec), self.spec), self.targets[index]
