"""Tiny per-silo image folders for the tests: real MNIST-5k digits (shipped offline) as 32x32 PNGs."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def make_silo_folder(root: Path, silo: int, count: int, *, captions: str = "jsonl") -> Path:
    """``count`` digits for silo ``silo`` (disjoint across silos), captioned in metadata.jsonl or .txt files."""
    from fedlora.data.mnist import load_mnist

    digits = load_mnist(32)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(count):
        i = silo * count + k
        name = f"img_{k:03d}.png"
        Image.fromarray(digits.images[i]).save(root / name)
        if captions == "jsonl":
            rows.append({"file_name": name, "text": digits.captions[i]})
        else:
            (root / name).with_suffix(".txt").write_text(digits.captions[i])
    if rows:
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
