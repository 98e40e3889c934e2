"""One self-contained ``report.html`` per run folder, readable offline and on any machine.

Everything comes from the files in the run folder (so old runs get a page too); images and CSS
are inlined, and a missing or unreadable file is stated on the page instead of failing.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..outputs import REPORT_HTML, ROC_FIGURE, SAMPLES_FILE, TRAINING_FIGURE
from .columns import Cell, fmt
from .folder import RunFolder
from .sections import Sections, Table
from .summary import RunSummary, as_number
from .templating import render

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"<svg", "image/svg+xml"),
    (b"<?xml", "image/svg+xml"),
)

COMMUNICATION_LABELS = {
    "bytes_up_per_client_round": "up, per client and round (mean)",
    "bytes_down_per_client_round": "down, per client and round (mean)",
    "bytes_eval_only_per_client_round": "eval-only download, per client and round (mean)",
    "bytes_down_per_client_round_max": "down, per client and round (max)",
}


@dataclass(frozen=True)
class Figure:
    """An image of the run folder as a data URI, or why it cannot be shown."""

    name: str
    uri: str | None = None
    error: str | None = None  # the file exists but could not be read
    size: int = 0
    image: bool = True  # starts like a PNG/JPEG/GIF/SVG; otherwise embedded as PNG with a warning

    @property
    def missing(self) -> bool:
        return self.uri is None and self.error is None


def inline_image(path: Path) -> Figure:
    if not path.is_file():
        return Figure(path.name)
    try:
        data = path.read_bytes()
    except OSError as err:
        return Figure(path.name, error=str(err))
    mime = next((m for sig, m in _SIGNATURES if data.lstrip()[: len(sig)] == sig), None)
    uri = f"data:{mime or 'image/png'};base64,{base64.b64encode(data).decode('ascii')}"
    return Figure(path.name, uri, size=len(data), image=mime is not None)


def _meta(s: RunSummary) -> list[tuple[str, Any]]:
    """The header line: the run's identity always, the rest where recorded."""
    items: list[tuple[str, Any]] = [
        ("method", s.method),
        ("aggregation", s.aggregation),
        ("clients", s.num_clients),
        ("rounds", s.rounds),
        ("seed", s.seed),
        ("dataset", s.dataset),
        ("base", s.base_model),
        ("adapter rank", s.adapter_rank),
    ]
    if s.client_ranks and len(set(map(str, s.client_ranks))) > 1:
        items.append(("client ranks", ", ".join(map(str, s.client_ranks))))
    return [(k, "n/a" if v is None else v) for i, (k, v) in enumerate(items) if v is not None or i < 5]


def _human_bytes(value: Any) -> Cell:
    x = as_number(value)
    if x is None:
        return Cell(None)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= size:
            return Cell(f"{x / size:.2f} {unit}", f"({x:,.0f} B)")
    return Cell(f"{x:,.0f} B")


def render_html(folder: RunFolder) -> str:
    """The page as a string (``write_html_report`` saves it)."""
    s = folder.summary
    communication = timing = None
    if s is not None and s.communication is not None:
        rows = tuple((COMMUNICATION_LABELS.get(k, k), _human_bytes(v)) for k, v in s.communication.to_dict().items())
        communication = Table(("payload", "bytes"), rows)
    if s is not None and s.timing is not None:
        timing = [(k.removesuffix("_s"), fmt(v, ".1f")) for k, v in s.timing.to_dict().items()]
    return render(
        "report.html.j2",
        folder=folder,
        name=folder.dir.name,
        s=s,
        meta=[] if s is None else _meta(s),
        sections=Sections.of(folder),
        communication=communication,
        timing=timing,
        figures={name: inline_image(folder.dir / name) for name in (TRAINING_FIGURE, ROC_FIGURE, SAMPLES_FILE)},
    )


def write_html_report(run_dir: str | Path | RunFolder) -> Path:
    """Write ``report.html`` into the run folder (a path, or one already read); works on any folder, complete or not."""
    folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    path = folder.dir / REPORT_HTML
    path.write_text(render_html(folder), encoding="utf-8")
    return path
