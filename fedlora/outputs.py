"""The run folder contract: ``runs/<name>/`` holds everything needed to audit a run."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import ExperimentConfig
from .errors import RunFolderError

CONFIG_FILE = "config.toml"
SPLITS_FILE = "splits.json"
SILOS_FILE = "silos.json"  # a per-silo run's split sizes, as each silo reported them (it has no splits.json)
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
REPORT_HTML = "report.html"  # the same report, self-contained (images inline)
COMPARISON_TABLE = "comparison.md"  # fedlora compare
PRIVACY_QUALITY_FIGURE = "privacy_quality.png"  # fedlora compare
ADAPTER_DIR = "adapter"
SAMPLES_FILE = "samples.png"
TRAINING_FIGURE = "training.png"
ROC_FIGURE = "roc.png"
VIEWS_DIR = "views"  # the audited models: global.safetensors, client_<k>.safetensors (fedlora evaluate reloads them)
GLOBAL_VIEW = "global"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


class RunOutputs:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def create(cls, cfg: ExperimentConfig) -> RunOutputs:
        """A fresh folder; an existing run of the same name is never overwritten (a -N suffix is added)."""
        base = Path(cfg.run.output_dir) / cfg.run.name
        root, k = base, 1
        while root.exists() and any(root.iterdir()):
            k += 1
            root = base.with_name(f"{base.name}-{k}")
        root.mkdir(parents=True, exist_ok=True)
        out = cls(root)
        out.path(CONFIG_FILE).write_text(cfg.to_toml())
        out.path(METRICS_FILE).write_text("")
        return out

    def path(self, name: str) -> Path:
        return self.root / name

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        with self.path(METRICS_FILE).open("a") as fh:
            fh.write(json.dumps(_jsonable(row)) + "\n")

    def keep_metrics_upto(self, server_round: int) -> None:
        """Drop the rows of rounds after ``server_round`` (a resume redoes them)."""
        rows = [r for r in self.read_metrics() if int(r.get("round", 0)) <= server_round]
        tmp = self.path(METRICS_FILE + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(self.path(METRICS_FILE))

    def read_metrics(self) -> list[dict]:
        """The rounds so far ([] before the first); a line that is not a JSON object is a RunFolderError."""
        path = self.path(METRICS_FILE)
        if not path.exists():
            return []
        rows = []
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RunFolderError.damaged(path, f"line {lineno} is not valid JSON ({err})") from err
            if not isinstance(row, dict):
                raise RunFolderError.damaged(path, f"line {lineno} is not a JSON object")
            rows.append(row)
        return rows

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        """Written to a temporary file first, so a crash never leaves a half-written JSON behind."""
        path = self.path(name)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(_jsonable(data), indent=1))
        tmp.replace(path)
        return path

    def view_path(self, target: str | int) -> Path:
        name = target if isinstance(target, str) else f"client_{target}"
        return self.root / VIEWS_DIR / f"{name}.safetensors"
