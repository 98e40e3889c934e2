"""Which clients' last updates the server keeps for the per-client membership audit, and where.

Keeping every client's last update grows the server's memory with the number of clients. The
audit keeps at most ``evaluation.audit_clients`` of them: every client when there are that many
or fewer, else a sample drawn from the run seed (the same clients on every run of the config).
A run's server writes each kept view to ``views/client_<k>.safetensors`` as it arrives and holds
only its path (``AuditViews.on_disk``): at SD-1.5 scale a rank-64 update is hundreds of MB, and
a run that fails still leaves the views of its last complete rounds for ``fedlora evaluate``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import ExperimentConfig

SAMPLE_STREAM = 13  # the seed stream of the audited sample (apart from the rounds' client sampling)


def audited_clients(cfg: ExperimentConfig) -> frozenset[int]:
    n, k = cfg.federation.num_clients, cfg.evaluation.audit_clients
    if n <= k:
        return frozenset(range(n))
    rng = np.random.default_rng([cfg.run.seed, SAMPLE_STREAM])
    return frozenset(int(c) for c in rng.choice(n, size=k, replace=False))


def view_file(folder: Path, client: int) -> Path:
    """``views/client_<k>.safetensors`` (the name ``RunOutputs.view_path`` and ``fedlora evaluate`` use)."""
    return folder / f"client_{client}.safetensors"


class AuditViews(MutableMapping):
    """client id -> its last view, for the audited clients only; the others' are dropped on arrival.

    In memory by default; with ``folder`` each view is written there on arrival (atomically: a
    crash mid-write leaves the previous file) and read back when asked for."""

    def __init__(self, audited: Iterable[int], items: Mapping[int, Any] | None = None, folder: Path | None = None):
        self.audited = frozenset(audited)
        self.folder = None if folder is None else Path(folder)
        self._held: dict[int, Any] = {}  # the view itself, or (on disk) its file
        self.update(items or {})

    @classmethod
    def on_disk(cls, audited: Iterable[int], folder: Path, items: Mapping[int, Any] | None = None) -> AuditViews:
        return cls(audited, items, folder=folder)

    def moved_to(self, folder: Path) -> AuditViews:
        """These on-disk views as files of ``folder`` (a resumed run folder, perhaps moved): nothing is read."""
        if self.folder is None:
            return AuditViews.on_disk(self.audited, folder, self)
        moved = AuditViews.on_disk(self.audited, folder)
        moved._held = {c: view_file(Path(folder), c) for c in self._held}
        return moved

    def __setitem__(self, client: int, view: Any) -> None:
        if client not in self.audited:
            return
        if self.folder is None:
            self._held[client] = view
            return
        from .models.lora import save_view

        path = view_file(self.folder, client)
        tmp = path.with_name(path.name + ".tmp")
        save_view(tmp, view)
        os.replace(tmp, path)
        self._held[client] = path

    def __getitem__(self, client: int) -> Any:
        held = self._held[client]
        if self.folder is None:
            return held
        from .run_files import read_view

        return read_view(held)

    def __delitem__(self, client: int) -> None:
        del self._held[client]

    def __iter__(self) -> Iterator[int]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)
