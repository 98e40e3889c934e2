"""``report.md``: the run in Markdown, rendered from the run folder's files like report.html."""

from __future__ import annotations

from pathlib import Path

from ..outputs import REPORT_FILE
from .folder import RunFolder
from .sections import Sections
from .templating import render


def render_markdown(folder: RunFolder) -> str:
    """The report as a string (``write_markdown_report`` saves it)."""
    cfg = folder.config
    return render(
        "report.md.j2",
        folder=folder,
        s=folder.summary,
        cfg=cfg,
        sections=Sections.of(folder),
        title=folder.dir.name if cfg is None else cfg.run.name,
        first_round=(folder.metrics or [{}])[0],
    )


def write_markdown_report(run_dir: str | Path | RunFolder) -> Path:
    """Write ``report.md`` into the run folder (a path, or one already read); works on any folder, complete or not."""
    folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    path = folder.dir / REPORT_FILE
    path.write_text(render_markdown(folder), encoding="utf-8")
    return path
