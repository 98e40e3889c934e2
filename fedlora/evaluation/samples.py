"""Images generated from captions, and grids of them for reports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ExperimentConfig
from ..data import Splits, load_dataset
from ..device import to_host
from .tracking import pick_eval_ids


@torch.no_grad()
def generate(
    pipeline: Any, captions: Sequence[str], *, steps: int, guidance_scale: float, seed: int, batch_size: int = 32
) -> np.ndarray:
    """uint8 (N, H, W, 3) images, one per caption, reproducible from ``seed``.

    The pipeline samples on its device from CPU-seeded noise (diffusers draws a CPU generator's
    noise on the CPU), and only the finished images come back to the host.
    """
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
            output_type="pt",
        ).images
        images = to_host(images).permute(0, 2, 3, 1).float().numpy()
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def save_grid(
    images: np.ndarray, path: str | Path, *, ncols: int, labels: Sequence[str] | None = None, scale: int = 3
) -> Path:
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


def save_member_samples(path: Path, cfg: ExperimentConfig, runtime: Any, splits: Splits) -> None:
    """Member images (top row) above what the global model generates from their captions."""
    dataset = load_dataset(cfg.data)
    member_ids, _ = pick_eval_ids(splits, cfg.evaluation.num_samples, cfg.run.seed)
    idx = dataset.indices_of(member_ids)
    captions = [dataset.captions[i] for i in idx]
    fake = generate(
        runtime.pipe,
        captions,
        steps=cfg.evaluation.sample_steps,
        guidance_scale=cfg.evaluation.guidance_scale,
        seed=cfg.run.seed,
    )
    ncols = min(8, len(idx))
    rows = []
    for start in range(0, len(idx), ncols):
        rows.append(dataset.images[idx[start : start + ncols]])
        rows.append(fake[start : start + ncols])
    images = np.concatenate(rows)
    labels = [c.split()[-1] for c in captions]
    row_labels = []
    for start in range(0, len(idx), ncols):
        chunk = labels[start : start + ncols]
        row_labels += [f"real {c}" for c in chunk] + [f"gen {c}" for c in chunk]
    save_grid(images, path, ncols=ncols, labels=row_labels)
