"""Marked sections of docs/results.md, so that each table script rewrites only its own part."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, name: str, lines: list[str]) -> None:
    """Replace the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` (or append it)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else ""
    block = "\n".join([start, *lines, end]) + "\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block
    path.write_text(text)
