"""Round checkpoints, so that an interrupted run continues where it stopped and ends as if never stopped.

After every round the server writes ``checkpoint/server.json`` + ``checkpoint/server.safetensors``
(the round, the rule's state, the DP mode's accountant, the round log, the RNG states); in
simulation each client writes its persistent state (proxy attacker, kept factors, DP accountant)
under ``checkpoint/clients/<partition>/`` after it trains, and reads it back when it is next
sampled (the state lives there between rounds, not in memory). Nothing is pickled: a checkpoint is a
JSON tree whose arrays sit in a safetensors file, so loading a run folder never runs its code.

``status.json`` (fedlora/run_status.py) says what became of the run.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .models.lora import ModelView
from .reports import Timing
from .rounds import RoundLog, RoundRecord
from .run_status import COMPLETE, FAILED, INTERRUPTED, RUNNING, incomplete_reason, read_status, write_status

if TYPE_CHECKING:
    from .config import ExperimentConfig

__all__ = ["COMPLETE", "FAILED", "INTERRUPTED", "RUNNING", "incomplete_reason", "read_status", "write_status"]

CHECKPOINT_DIR = "checkpoint"
CLIENTS_DIR = "clients"
SERVER_STEM = "server"
KEEP_CLIENT_ROUNDS = 2  # a client's state from the round in flight and from its last complete one


# the dataclasses a checkpoint may hold, by name (nothing else is rebuilt from a file)
_DATACLASSES: dict[str, type] = {cls.__name__: cls for cls in (ModelView, RoundRecord, RoundLog, Timing)}


class CheckpointError(ValueError):
    """A checkpoint or run folder that cannot be resumed (the message says why)."""


# ---- a JSON tree + a flat array file --------------------------------------------------------


def encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` as JSON, its arrays moved into ``arrays`` (referenced by name)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = np.ascontiguousarray(value)
        return {"__array__": name}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if name not in _DATACLASSES:
            raise TypeError(f"cannot checkpoint a {name}")
        fields = {f.name: encode(getattr(value, f.name), arrays) for f in dataclasses.fields(value)}
        return {"__dataclass__": name, "fields": fields}
    if isinstance(value, Mapping):  # keys keep their type (partition ids are ints)
        return {"__map__": [[encode(k, arrays), encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [encode(v, arrays) for v in value]
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def decode(tree: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(tree, list):
        return [decode(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__array__" in tree:
        return arrays[tree["__array__"]]
    if "__tuple__" in tree:
        return tuple(decode(v, arrays) for v in tree["__tuple__"])
    if "__map__" in tree:
        return {_hashable(decode(k, arrays)): decode(v, arrays) for k, v in tree["__map__"]}
    if "__dataclass__" in tree:
        cls = _DATACLASSES.get(tree["__dataclass__"])
        if cls is None:
            raise CheckpointError(f"unknown object {tree['__dataclass__']!r} in a checkpoint")
        return cls(**{k: decode(v, arrays) for k, v in tree["fields"].items()})
    return {k: decode(v, arrays) for k, v in tree.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save_tree(folder: Path, stem: str, tree: Mapping[str, Any]) -> None:
    """``stem.json`` + ``stem.safetensors``, each written to a temporary file first and then renamed
    (the JSON last: a checkpoint whose JSON exists is complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    encoded = encode(dict(tree), arrays)
    tensors, text = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    save_file(arrays, str(tensors) + ".tmp")
    Path(str(tensors) + ".tmp").replace(tensors)
    Path(str(text) + ".tmp").write_text(json.dumps(encoded))
    Path(str(text) + ".tmp").replace(text)


def load_tree(folder: Path, stem: str) -> dict[str, Any]:
    text, tensors = folder / f"{stem}.json", folder / f"{stem}.safetensors"
    try:
        arrays = load_file(str(tensors)) if tensors.exists() else {}
        return decode(json.loads(text.read_text()), arrays)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # safetensors raises its own error types too
        raise CheckpointError(f"{text} is damaged: {exc}") from None
    except Exception as exc:  # noqa: BLE001  # SafetensorError derives from Exception only
        raise CheckpointError(f"{tensors} is damaged: {exc}") from None


# ---- RNG states ------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """numpy's and Python's global generators (Flower draws central-DP noise from numpy's) and torch's."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "numpy": [kind, np.asarray(keys), int(pos), int(has_gauss), float(cached)],
        "python": [py_version, list(py_state), py_gauss],
        "torch": torch.get_rng_state().numpy(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8).copy()))


# ---- the run folder's checkpoint and status --------------------------------------------------


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def save_server(run_dir: Path, server_round: int, state: Mapping[str, Any]) -> None:
    save_tree(checkpoint_dir(run_dir), SERVER_STEM, {"round": server_round, **state})
    write_status(run_dir, RUNNING, last_round=server_round)


def load_server(run_dir: Path) -> dict[str, Any]:
    folder = checkpoint_dir(run_dir)
    if not (folder / f"{SERVER_STEM}.json").exists():
        raise CheckpointError(
            f"{run_dir} has no checkpoint to resume from ({folder / (SERVER_STEM + '.json')} is missing); "
            "start the run again instead"
        )
    return load_tree(folder, SERVER_STEM)


def resume_config(run_dir: Path) -> ExperimentConfig:
    """The config a run folder was started with, once it is known to hold a checkpoint (``fedlora run
    --resume``, and a deployment's run config ``resume``): refused before anything starts otherwise."""
    from .config import load_config
    from .outputs import CONFIG_FILE

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir / CONFIG_FILE} is missing: {run_dir} is not a fedlora run folder")
    load_server(run_dir)
    return load_config(run_dir / CONFIG_FILE)


def finish(run_dir: Path) -> None:
    """A finished run needs no checkpoint: drop it, mark the run complete."""
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)
    write_status(run_dir, COMPLETE)


# ---- the clients' persistent state (simulation: the clients share the run folder) ------------


def client_folder(state_dir: Path, partition: int) -> Path:
    return Path(state_dir) / str(partition)


def save_client(state_dir: Path, partition: int, server_round: int, state: Mapping[str, Any]) -> None:
    folder = client_folder(state_dir, partition)
    save_tree(folder, f"round_{server_round}", state)
    rounds = sorted(_saved_rounds(folder))
    for old in rounds[:-KEEP_CLIENT_ROUNDS]:
        for suffix in (".json", ".safetensors"):
            (folder / f"round_{old}{suffix}").unlink(missing_ok=True)


def load_client(state_dir: Path, partition: int, before_round: int) -> dict[str, Any] | None:
    """The client's state after its last training round before ``before_round``, if it saved one."""
    folder = client_folder(state_dir, partition)
    rounds = [r for r in _saved_rounds(folder) if r < before_round]
    return load_tree(folder, f"round_{max(rounds)}") if rounds else None


def _saved_rounds(folder: Path) -> list[int]:
    if not folder.exists():
        return []
    return [int(p.stem.split("_", 1)[1]) for p in folder.glob("round_*.json") if p.stem.split("_", 1)[1].isdigit()]
