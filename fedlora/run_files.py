"""Reading a finished run folder strictly, for ``fedlora evaluate`` and ``fedlora compare``.

A file that is missing or damaged (truncated by a full disk or an interrupted copy, or not what it
should hold) becomes one ``RunFolderError`` naming it ("FILE is damaged: reason"), never a parser's
traceback, and before any expensive work starts. The reports read the same folder tolerantly
instead (``fedlora.reports.folder``): a page can say what is missing, an audit cannot guess it.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from .config import ConfigError, ExperimentConfig, load_config
from .data.splits import Splits
from .errors import RunFolderError

if TYPE_CHECKING:
    import torch

    from .models.lora import ModelView

SPLIT_SETS = ("member_aux", "member_test", "nonmember_aux", "nonmember_test")


missing, damaged = RunFolderError.missing, RunFolderError.damaged


def require(path: Path, hint: str = "") -> Path:
    if not path.is_file():
        raise missing(path, hint)
    return path


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """What a reader of ``path`` raises on bad bytes becomes ``damaged(path, ...)``."""
    try:
        yield
    except RunFolderError:
        raise
    except (SafetensorError, OSError, UnicodeDecodeError, ValueError, RuntimeError) as err:
        raise damaged(path, str(err) or type(err).__name__) from err


def read_json(path: Path, hint: str = "") -> dict[str, Any]:
    """A JSON object (what every run-folder JSON file holds)."""
    with reading(require(path, hint)):
        text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise damaged(path, f"not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise damaged(path, f"holds a JSON {type(data).__name__}, not an object")
    return data


def read_config(path: Path) -> ExperimentConfig:
    """config.toml as written (without overrides: an override's own error must name the override).

    A truncated TOML often still parses, the lost keys then reading as defaults (another audit than
    the run's); a run writes every section, each line ending in a newline, so a cut file shows.
    """
    with reading(require(path, "not a fedlora run folder?")):
        text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise damaged(path, "it ends mid-line (truncated?)")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise damaged(path, f"not valid TOML ({err})") from err
    absent = [f"[{f.name}]" for f in dataclasses.fields(ExperimentConfig) if f.name not in raw]
    if absent:
        raise damaged(path, f"no {', '.join(absent)} section (a run's {path.name} lists every section; truncated?)")
    try:
        return load_config(path)
    except ConfigError as err:
        raise damaged(path, f"not a valid fedlora config ({err})") from err


def _ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def read_splits(path: Path) -> Splits:
    raw = read_json(path, "not a finished fedlora run folder?")
    for key in ("dataset", "seed", "public_seed", "public", "clients"):
        if key not in raw:
            raise damaged(path, f"no {key!r} key")
    clients = raw["clients"]
    if not _ids(raw["public"]) or not isinstance(clients, Mapping):
        raise damaged(path, "'public' must list sample ids and 'clients' map client ids to their sets")
    for cid, sets in clients.items():
        if not str(cid).isdigit() or not isinstance(sets, Mapping):
            raise damaged(path, f"client entry {cid!r} is not a client id with its sets")
        for name in SPLIT_SETS:
            if not _ids(sets.get(name)):
                raise damaged(path, f"client {cid}: {name!r} is missing or not a list of sample ids")
    return Splits.from_json(raw)


def read_view(path: Path) -> ModelView:
    """One audited model of ``views/`` (``fedlora.models.lora.save_view``'s file)."""
    from .models.lora import load_view

    with reading(require(path)):
        return load_view(path)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (an adapter), read through so a truncated one is caught here."""
    from safetensors.torch import load_file

    with reading(require(path)):
        return load_file(str(path))
