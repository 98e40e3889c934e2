"""The reports' Jinja2 environment: templates ship in ``fedlora/reports/templates``; HTML ones are autoescaped."""

from __future__ import annotations

from typing import Any

import jinja2

from .. import outputs
from .columns import LEAKAGE_COLUMNS, LEGEND, NOT_MEASURABLE, fmt


def md_cell(text: Any) -> str:
    """A Markdown table cell: pipes escaped so they do not split the cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("fedlora.reports", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
ENV.filters.update(fmt=fmt, md=md_cell, na=lambda value: "n/a" if value is None else value)
# the run folder's file names (outputs.CONFIG_FILE, ...) and the leakage table's columns and legend
ENV.globals.update(
    {k: v for k, v in vars(outputs).items() if k.isupper() and isinstance(v, str)},
    LEAKAGE_COLUMNS=LEAKAGE_COLUMNS,
    LEGEND=LEGEND,
    NOT_MEASURABLE=NOT_MEASURABLE,
)


def render(template: str, **context: Any) -> str:
    return ENV.get_template(template).render(**context)
