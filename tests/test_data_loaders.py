"""The offline loaders: shapes, stable ids, captions, and the image-folder error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedlora.data.base import DatasetError, ImageDataset
from fedlora.data.digit_captions import DIGIT_WORDS
from fedlora.data.digits import load_digits_dataset
from fedlora.data.image_folder import load_image_folder
from fedlora.data.openmoji import load_openmoji


def _check_basic(ds: ImageDataset, size: int) -> None:
    assert ds.images.dtype == np.uint8
    assert ds.images.shape == (len(ds), size, size, 3)
    assert len(set(ds.ids)) == len(ds)
    assert len(ds.captions) == len(ds.groups) == len(ds)


def _same(a: ImageDataset, b: ImageDataset) -> None:
    assert a.ids == b.ids and a.captions == b.captions and a.groups == b.groups
    np.testing.assert_array_equal(a.images, b.images)


def _save(path: Path, color: tuple[int, ...], mode: str = "RGB", size: tuple[int, int] = (20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


# --- openmoji ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emoji() -> ImageDataset:
    return load_openmoji(32, limit=64)


def test_openmoji_shapes_ids_and_determinism(emoji: ImageDataset) -> None:
    _check_basic(emoji, 32)
    assert len(emoji) == 64
    assert emoji.name == "openmoji"
    assert list(emoji.ids) == sorted(emoji.ids)
    assert all(i.startswith("openmoji-") for i in emoji.ids)
    _same(emoji, load_openmoji(32, limit=64))


def test_openmoji_captions_and_images(emoji: ImageDataset) -> None:
    for caption, image, group in zip(emoji.captions, emoji.images, emoji.groups):
        assert caption and caption == caption.lower() and caption.strip() == caption
        assert "variation selector" not in caption and "zero width joiner" not in caption
        assert image.std() > 0
        assert group
    # ids spell the code points, captions their Unicode names
    import unicodedata

    for sid, caption in zip(emoji.ids, emoji.captions):
        first = chr(int(sid.removeprefix("openmoji-").split("-")[0], 16))
        assert caption.startswith(unicodedata.name(first).lower())


def test_openmoji_known_emoji_caption_and_group() -> None:
    ds = load_openmoji(16)
    where = dict(zip(ds.ids, range(len(ds))))
    cake = where["openmoji-1F382"]
    assert ds.captions[cake] == "birthday cake"
    assert ds.groups[cake] == "miscellaneous symbols and pictographs"
    family = where["openmoji-1F468-200D-1F469-200D-1F467"]  # a ZWJ ligature
    assert ds.captions[family] == "man woman girl"
    assert ds.images[family].std() > 0


def test_openmoji_rejects_unknown_font() -> None:
    with pytest.raises(ValueError, match="colr0"):
        load_openmoji(32, limit=1, font="sbix")


# --- digits -----------------------------------------------------------------------------


def test_digits() -> None:
    ds = load_digits_dataset(16)
    _check_basic(ds, 16)
    assert len(ds) == 1797 and ds.name == "digits"
    assert ds.ids[0] == "digits-00000" and ds.ids[-1] == "digits-01796"
    assert set(ds.groups) == {str(d) for d in range(10)}
    assert len(DIGIT_WORDS) == 10 and DIGIT_WORDS[7] == "seven"
    for caption, group in zip(ds.captions, ds.groups):
        assert caption == f"a handwritten digit {DIGIT_WORDS[int(group)]}"
    assert ds.images.min() < 64 and ds.images.max() > 192  # full 0..255 range, not 0..16
    _same(ds, load_digits_dataset(16))


# --- image folder -----------------------------------------------------------------------


def test_image_folder_metadata_jsonl_with_subfolder(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    _save(root / "a.png", (255, 0, 0))
    _save(root / "cats" / "b.jpg", (0, 255, 0))
    _save(root / "cats" / "c.webp", (0, 0, 255))
    rows = [
        {"file_name": "a.png", "text": "a red square"},
        {"file_name": "cats/b.jpg", "text": "a green cat"},
        {"file_name": "./cats/c.webp", "text": "a blue cat"},
        {"file_name": "gone.png", "text": "ignored: no such file"},
    ]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    ds = load_image_folder(root, 8)
    _check_basic(ds, 8)
    assert ds.skipped_files == ()
    assert ds.name == "folder:pets"
    assert ds.ids == ("folder-a.png", "folder-cats/b.jpg", "folder-cats/c.webp")
    assert ds.captions == ("a red square", "a green cat", "a blue cat")
    assert ds.groups == (".", "cats", "cats")
    assert tuple(ds.images[0, 4, 4]) == (255, 0, 0)
    _same(ds, load_image_folder(str(root), 8))


def test_image_folder_txt_captions_and_rgba_on_white(tmp_path: Path) -> None:
    _save(tmp_path / "dogs" / "x.png", (0, 0, 0, 0), mode="RGBA")  # fully transparent
    (tmp_path / "dogs" / "x.txt").write_text("an empty frame\n")
    _save(tmp_path / "y.BMP", (10, 20, 30))
    (tmp_path / "y.txt").write_text("a dark square")
    (tmp_path / "notes.md").write_text("not an image, ignored")

    ds = load_image_folder(tmp_path, 4)
    assert ds.skipped_files == ()
    assert ds.ids == ("folder-dogs/x.png", "folder-y.BMP")
    assert ds.captions == ("an empty frame", "a dark square")
    assert ds.groups == ("dogs", ".")
    assert (ds.images[0] == 255).all()  # transparency composited on white
    assert tuple(ds.images[1, 0, 0]) == (10, 20, 30)


def test_image_folder_corrupt_file(tmp_path: Path) -> None:
    _save(tmp_path / "good.png", (1, 2, 3))
    (tmp_path / "x.png").write_bytes(b"not an image")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "good.png", "text": "good"}) + "\n" + json.dumps({"file_name": "x.png", "text": "bad"})
    )
    with pytest.raises(DatasetError, match="x.png"):
        load_image_folder(tmp_path, 8)
    ds = load_image_folder(tmp_path, 8, on_bad_image="skip")
    assert ds.skipped_files == ("x.png",)  # named like the ids, relative to the folder
    assert ds.ids == ("folder-good.png",)
    assert ds.subset([0]).skipped_files == ()  # a subset is not what was loaded


def test_image_folder_bad_policy(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(ValueError, match="error.*skip"):
        load_image_folder(tmp_path, 8, on_bad_image="ignore")


def test_image_folder_missing_caption(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "a.txt").write_text("a")
    _save(tmp_path / "sub" / "lonely.png", (1, 2, 3))
    with pytest.raises(DatasetError, match="lonely.png"):
        load_image_folder(tmp_path, 8)


def test_image_folder_empty_or_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere", 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        load_image_folder(tmp_path / "empty", 8)


def test_image_folder_bad_metadata_line(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", (1, 2, 3))
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{not json}\n')
    with pytest.raises(DatasetError, match=r"metadata.jsonl:2"):
        load_image_folder(tmp_path, 8)
