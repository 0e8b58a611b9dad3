"""Where a training step's time goes on this machine: decode, augmentation, forward, backward.

    python -m dermsort.train.profile --data ../shared/data/ham10000 [--size 224] [--threads 2]

Prints milliseconds per image for each part and for a few step variants (frozen stages, memory
layout, bf16 autocast), so a recipe is designed from measurements rather than guesses. Uses real
images through the same cache/augment/preprocess path as ``dermsort train``.
"""

from __future__ import annotations

import random
import time

import click
import numpy as np


def _per_image(seconds: float, n: int) -> str:
    return f"{1000 * seconds / max(1, n):6.1f} ms/img"


@click.command()
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True))
@click.option("--arch", default="efficientnet_lite0", show_default=True)
@click.option("--size", default=224, show_default=True, type=int)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--images", default=96, show_default=True, type=int, help="Real images to time decode/augment on.")
@click.option("--threads", default=2, show_default=True, type=int)
def main(data: tuple[str, ...], arch: str, size: int, batch_size: int, images: int, threads: int) -> None:
    import torch

    from .data import read_sources
    from .dataset import Augment, ImageCache
    from .models import build_model, default_preprocess, freeze_stages, set_frozen_eval
    from dermsort.runtime.preprocess import resize_and_crop, to_array

    torch.set_num_threads(threads)
    rows = read_sources(data)[:images]
    spec = default_preprocess(arch, size)
    cache = ImageCache(spec)
    t = time.perf_counter()
    decoded = [cache.get(r.path) for r in rows]
    click.echo(f"decode (runtime open_image, once per run): {_per_image(time.perf_counter() - t, len(rows))}")
    augment, rng = Augment(), random.Random(0)
    t = time.perf_counter()
    arrays = [to_array(resize_and_crop(augment(img, rng), spec), spec) for img in decoded]
    click.echo(f"augment + resize + normalise (every epoch): {_per_image(time.perf_counter() - t, len(arrays))}")
    x = torch.from_numpy(np.stack((arrays * (batch_size // len(arrays) + 1))[:batch_size]))
    y = torch.zeros(batch_size, dtype=torch.long)
    for frozen_stages, channels_last, bf16 in [(0, False, False), (0, True, False), (0, True, True), (3, True, False),
                                                (3, True, True)]:
        model = build_model(arch, 7, pretrained=True)
        frozen = freeze_stages(model, arch, frozen_stages)
        model.train()
        set_frozen_eval(frozen)
        batch = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            batch = x.contiguous(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, 1e-4)
        fwd, bwd = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(batch).float(), y)
            t1 = time.perf_counter()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            fwd.append(t1 - t0)
            bwd.append(time.perf_counter() - t1)
        f, b = min(fwd[1:]), min(bwd[1:])
        click.echo(f"step frozen={frozen_stages} channels_last={channels_last} bf16={bf16}: forward {_per_image(f, batch_size)}, "
                   f"backward+update {_per_image(b, batch_size)}, total {_per_image(f + b, batch_size)}")


if __name__ == "__main__":  # pragma: no cover
    main()
