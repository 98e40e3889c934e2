"""A user's own captioned images from a local folder.

Captions come from a Hugging Face ``imagefolder``-style ``metadata.jsonl`` or from a
``.txt`` file beside each image, the two layouts most captioning tools write, so an
existing fine-tuning set can be used as is.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np

from ..config import DataConfig
from ..errors import ConfigError
from ..registry import DATASETS
from .base import DatasetError, DatasetSource, ImageDataset, resize_square

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BAD_IMAGE_POLICIES = ("error", "skip")
METADATA_FILE = "metadata.jsonl"


def _is_hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _read_metadata(root: Path) -> dict[str, str]:
    """Relative posix path -> caption from every ``metadata.jsonl`` (``file_name`` is relative to its own folder)."""
    captions: dict[str, str] = {}
    for meta in sorted(root.rglob(METADATA_FILE)):
        if not meta.is_file() or _is_hidden(meta.relative_to(root)):
            continue
        base = meta.parent.relative_to(root)
        with meta.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{meta}:{lineno}: not valid JSON ({exc.msg})") from exc
                if (
                    not isinstance(row, dict)
                    or not isinstance(row.get("file_name"), str)
                    or not isinstance(row.get("text"), str)
                ):
                    raise DatasetError(f"{meta}:{lineno}: each line needs string fields 'file_name' and 'text'")
                captions[(base / row["file_name"]).as_posix()] = row["text"].strip()  # pathlib drops "./"
    return captions


def _caption(root: Path, rel: str, metadata: dict[str, str]) -> str:
    if rel in metadata:
        return metadata[rel]
    txt = (root / rel).with_suffix(".txt")
    if txt.is_file():
        return txt.read_text(encoding="utf-8").strip()
    raise DatasetError(f"{root / rel}: no caption (add it to {METADATA_FILE} or write {txt.name} beside it)")


def _decode_rgb(file: Path) -> np.ndarray:
    """RGB uint8; transparency is composited on white (how the image would be viewed)."""
    from PIL import Image, ImageOps

    with Image.open(file) as raw:
        im = ImageOps.exif_transpose(raw)  # phone photos store rotation in EXIF
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_image_folder(path: str | Path, image_size: int, *, on_bad_image: str = "error") -> ImageDataset:
    """All images under ``path`` (recursively); undecodable ones skipped are named in ``skipped_files``.

    Ids are ``"folder-" + relative posix path`` so they survive re-listing and copying.
    ``groups`` is the image's folder relative to ``path`` ("." at the top level), so
    class-per-folder layouts give class labels. Hidden files and folders are ignored;
    ``metadata.jsonl`` rows for files that do not exist are ignored too.
    """
    from PIL import Image

    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")

    rels = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _is_hidden(p.relative_to(root))
    )
    if not rels:
        raise DatasetError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    metadata = _read_metadata(root)
    captions_by_rel = {rel: _caption(root, rel, metadata) for rel in rels}  # fail before decoding anything

    ids: list[str] = []
    images: list[np.ndarray] = []
    captions: list[str] = []
    groups: list[str] = []
    skipped: list[str] = []  # relative posix paths, like the ids
    for rel in rels:
        try:
            rgb = _decode_rgb(root / rel)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            if on_bad_image == "skip":
                skipped.append(rel)
                continue
            raise DatasetError(
                f"{root / rel}: cannot decode image ({exc}); use on_bad_image='skip' to skip it"
            ) from exc
        ids.append(f"folder-{rel}")
        images.append(resize_square(rgb, image_size))
        captions.append(captions_by_rel[rel])
        groups.append(PurePosixPath(rel).parent.as_posix())

    if not ids:
        raise DatasetError(
            f"image folder {root}: all {len(skipped)} images failed to decode (first: {skipped[0]}); "
            "nothing to train on"
        )
    return ImageDataset(
        name=f"folder:{root.resolve().name}",
        ids=tuple(ids),
        images=np.stack(images),
        captions=tuple(captions),
        groups=tuple(groups),
        skipped_files=tuple(skipped),
    )


def _needs_folder(data: DataConfig) -> None:
    if not data.data_dir:
        raise ConfigError("data.dataset = 'folder' needs data.data_dir (a folder of captioned images)")


DATASETS.add(
    "folder",
    DatasetSource(
        load=lambda data: load_image_folder(data.data_dir, data.image_size, on_bad_image=data.on_bad_image),
        validate=_needs_folder,
    ),
    description="a local folder of images with captions in metadata.jsonl or .txt files beside them",
)
