"""``status.json``: what became of a run (running, interrupted, failed, complete) and its last complete round.

A run killed outright stays ``running``; readers of a folder without ``summary.json`` use this to
say why (and how to continue it) instead of "summary.json is missing".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import RunFolderError

STATUS_FILE = "status.json"
RUNNING, INTERRUPTED, FAILED, COMPLETE = "running", "interrupted", "failed", "complete"


def write_status(run_dir: Path, state: str, *, last_round: int | None = None, reason: str | None = None) -> None:
    path = Path(run_dir) / STATUS_FILE
    previous = read_status(run_dir) or {}
    record = {"state": state, "last_complete_round": previous.get("last_complete_round")}
    if last_round is not None:
        record["last_complete_round"] = last_round
    if reason:
        record["reason"] = reason
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        return None


def incomplete_reason(run_dir: Path) -> str | None:
    """Why a run folder holds no finished run, in a sentence, or None if it finished (or predates status files)."""
    status = read_status(run_dir)
    if status is None or status.get("state") == COMPLETE:
        return None
    last = status.get("last_complete_round")
    done = f"its last complete round is {last}" if last is not None else "no round completed"
    how = {
        RUNNING: "it is still running or was killed",
        INTERRUPTED: "it was interrupted",
        FAILED: f"it failed ({status.get('reason', 'see its log')})",
    }.get(str(status.get("state")), f"its state is {status.get('state')!r}")
    resume = f"; continue it with: fedlora run --resume {run_dir}" if last is not None else ""
    return f"{run_dir} is an incomplete run: {how}, {done}{resume}"


def refuse_unfinished(run_dir: Path, finished_marker: str = "summary.json") -> None:
    """Readers of finished runs call this first: an unfinished folder is named as such, with how to continue it."""
    unfinished = incomplete_reason(Path(run_dir))
    if unfinished and not (Path(run_dir) / finished_marker).exists():
        raise RunFolderError(unfinished)
