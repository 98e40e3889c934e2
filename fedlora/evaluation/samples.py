"""Images generated from captions, and grids of them for reports."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch


@torch.no_grad()
def generate(pipeline, captions: Sequence[str], *, steps: int, guidance_scale: float, seed: int, batch_size: int = 32) -> np.ndarray:
    """uint8 (N, H, W, 3) images, one per caption, reproducible from ``seed``."""
    size = pipeline.unet.config.sample_size * (2 ** (len(pipeline.vae.config.block_out_channels) - 1))
    out = []
    for i in range(0, len(captions), batch_size):
        gen = torch.Generator().manual_seed(seed + i)
        images = pipeline(
            list(captions[i : i + batch_size]),
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=gen,
            output_type="np",
        ).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def save_grid(images: np.ndarray, path: str | Path, *, ncols: int, labels: Sequence[str] | None = None, scale: int = 3) -> Path:
    """A PNG grid; optional labels are drawn above each column's first row."""
    from PIL import Image, ImageDraw

    n, h, w, _ = images.shape
    nrows = -(-n // ncols)
    label_h = 12 if labels else 0
    canvas = Image.new("RGB", (ncols * w * scale, nrows * (h * scale + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, im in enumerate(images):
        r, c = divmod(k, ncols)
        x, y = c * w * scale, r * (h * scale + label_h)
        if labels:
            draw.text((x + 2, y), labels[k][: max(4, (w * scale) // 6)], fill="black")
        canvas.paste(Image.fromarray(im).resize((w * scale, h * scale), Image.Resampling.NEAREST), (x, y + label_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
