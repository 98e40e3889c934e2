"""Everything about a run's reports: the typed summary.json, report.md, report.html and run comparisons.

Reports are rendered from the files in a run folder alone (Jinja2 templates in ``templates/``), so
any finished, re-evaluated or old run folder gets them; the leakage columns, number formats and
attack notes they share live in ``columns``.
"""

from __future__ import annotations

from pathlib import Path

from .compare import compare_runs
from .folder import RunFolder
from .html import render_html, write_html_report
from .markdown import render_markdown, write_markdown_report
from .summary import Communication, Failures, Metrics, Privacy, RunSummary, Timing, load_summary


def write_reports(run_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md and report.html into the run folder, from its files (read once for both)."""
    folder = RunFolder(run_dir)
    return write_markdown_report(folder), write_html_report(folder)


__all__ = [
    "Communication",
    "Failures",
    "Metrics",
    "Privacy",
    "RunFolder",
    "RunSummary",
    "Timing",
    "compare_runs",
    "load_summary",
    "render_html",
    "render_markdown",
    "write_html_report",
    "write_markdown_report",
    "write_reports",
]
