"""A run folder as the reports see it: every file optional, and why one is missing kept for the page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import ConfigError, ExperimentConfig, load_config
from ..outputs import CONFIG_FILE, METRICS_FILE, SILOS_FILE, SPLITS_FILE, SUMMARY_FILE
from .summary import RunSummary


class RunFolder:
    """The run folder's files, each None when missing or unreadable (with the reason in ``problems``).

    Old and half-written runs get reports too, so nothing here raises on a bad file.
    """

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.problems: dict[str, str] = {}  # file name -> what is wrong with it
        summary = self._json(SUMMARY_FILE)
        self.summary = None if summary is None else RunSummary.from_dict(summary)
        self.splits = self._splits()
        self.config_text = self._text(CONFIG_FILE)
        self.config = self._config()
        self.metrics = self._metrics()

    def has(self, name: str) -> bool:
        return (self.dir / name).exists()

    def missing(self, name: str) -> str:
        """Why ``name`` is not usable (its problem, else that it is not there)."""
        return self.problems.get(name, f"{name} is missing from the run folder")

    def _text(self, name: str) -> str | None:
        path = self.dir / name
        if not path.is_file():
            self.problems[name] = f"{name} is missing from the run folder"
            return None
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            self.problems[name] = f"{name} could not be read: {err}"
            return None

    def _json(self, name: str) -> dict[str, Any] | None:
        text = self._text(name)
        if text is None:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            self.problems[name] = f"{name} is not valid JSON: {err}"
            return None
        if not isinstance(data, dict):
            self.problems[name] = f"{name} does not hold a JSON object"
            return None
        return data

    def _splits(self) -> dict[str, Any] | None:
        """splits.json with ``clients`` as client id -> sets (older layouts: a list; entries not objects dropped).

        A per-silo run has no splits.json (its server never saw a sample id): silos.json, the sizes
        each silo reported, stands in for it."""
        splits = self._json(SILOS_FILE if self.has(SILOS_FILE) and not self.has(SPLITS_FILE) else SPLITS_FILE)
        if splits is None:
            return None
        clients = splits.get("clients")
        if isinstance(clients, list):
            clients = dict(enumerate(clients))
        if not isinstance(clients, dict):
            clients = {}
        return {**splits, "clients": {str(k): c for k, c in clients.items() if isinstance(c, dict)}}

    def _config(self) -> ExperimentConfig | None:
        if self.config_text is None:
            return None
        try:
            return load_config(self.dir / CONFIG_FILE)
        except ConfigError as err:
            self.problems[CONFIG_FILE] = f"{CONFIG_FILE} is not a valid fedlora config: {err}"
            return None

    def _metrics(self) -> list[dict[str, Any]] | None:
        text = self._text(METRICS_FILE)
        if text is None:
            return None
        rows, bad = [], []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad.append(i)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(i)
        if bad:
            self.problems[METRICS_FILE] = f"{METRICS_FILE}: unreadable line(s) {', '.join(map(str, bad))} skipped"
        return rows
