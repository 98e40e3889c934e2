"""A silo's own data (deployment): the image folder its node config names, and its local split.

In a cross-silo deployment the server holds no private data (DESIGN.md, threat model). With
``data.dataset = "silo"`` each SuperNode reads the folder in its node config (``data-path``),
splits it with its own seed into members (trained on) and non-members (held out for the
audit), and tells the server only the sizes. File names, captions and images stay on the silo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig, ExperimentConfig
from ..errors import ConfigError
from ..protocol import (
    DATA_PATH,
    SILO_COUNT_PREFIX,
    SILO_MEMBERS,
    SILO_NODE_KEYS,
    SILO_NONMEMBERS,
    SILO_ON_BAD_IMAGE,
    SILO_SPLIT_SEED,
)
from ..registry import DATASETS
from .base import DatasetError, DatasetSource, ImageDataset
from .image_folder import BAD_IMAGE_POLICIES, load_image_folder
from .splits import ClientSplit, Splits

SILO_DATASET = "silo"
MIN_SPLIT = 2  # members and non-members each halve into an aux and a test set


def node_option(node_config: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    """A node-config value of ``kind`` (bool is no int here); the error names the key and the allowed form."""
    if key not in node_config:
        return default
    value = node_config[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        example = f'{key}="..."' if kind is str else f"{key}=<{kind.__name__}>"
        raise ConfigError(f"node_config {key!r} must be a {kind.__name__} ({example}), got {value!r}")
    return value


@dataclass(frozen=True)
class SiloSettings:
    """What a SuperNode's node config says about its data (``fedlora.protocol.SILO_NODE_KEYS``)."""

    data_path: Path
    members: int
    nonmembers: int
    split_seed: int
    on_bad_image: str

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any], cfg: ExperimentConfig) -> SiloSettings:
        """Defaults come from the run's config (split sizes, on_bad_image, run.seed)."""
        if DATA_PATH not in node_config:
            raise ConfigError(
                f"data.dataset = {SILO_DATASET!r}: this SuperNode's node_config has no {DATA_PATH!r}; start it with "
                f"--node-config '{DATA_PATH}=\"/path/to/images\" partition-id=K' (optional keys: "
                f"{', '.join(k for k in SILO_NODE_KEYS if k != DATA_PATH)})"
            )
        settings = cls(
            data_path=Path(node_option(node_config, DATA_PATH, str, "")).expanduser(),
            members=node_option(node_config, SILO_MEMBERS, int, cfg.data.members_per_client),
            nonmembers=node_option(node_config, SILO_NONMEMBERS, int, cfg.data.nonmembers_per_client),
            split_seed=node_option(node_config, SILO_SPLIT_SEED, int, cfg.run.seed),
            on_bad_image=node_option(node_config, SILO_ON_BAD_IMAGE, str, cfg.data.on_bad_image),
        )
        for key, value in ((SILO_MEMBERS, settings.members), (SILO_NONMEMBERS, settings.nonmembers)):
            if value < MIN_SPLIT:
                raise ConfigError(
                    f"node_config {key!r} = {value} must be at least {MIN_SPLIT} (an aux and a test half)"
                )
        if settings.on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(
                f"node_config {SILO_ON_BAD_IMAGE!r} = {settings.on_bad_image!r}; "
                f"choose one of {list(BAD_IMAGE_POLICIES)}"
            )
        return settings


def silo_split(ids: tuple[str, ...], members: int, nonmembers: int, seed: int, where: str = "silo") -> ClientSplit:
    """Seeded members / non-members, each halved into aux and test, as ``make_splits`` does per client.

    Depends only on the set of ids and the seed (the ids are sorted first), so the same folder
    gives the same split on any machine.
    """
    need = members + nonmembers
    if need > len(ids):
        raise DatasetError(
            f"{where}: {members} members + {nonmembers} non-members = {need} images needed, the folder has "
            f"{len(ids)}; lower node_config {SILO_MEMBERS!r} / {SILO_NONMEMBERS!r} or add images"
        )
    order = sorted(ids)
    chosen = [order[i] for i in np.random.default_rng([seed, 1]).permutation(len(order))[:need]]
    member_ids, nonmember_ids = chosen[:members], chosen[members:]
    return ClientSplit(
        client_id=0,
        member_aux=tuple(member_ids[: members // 2]),
        member_test=tuple(member_ids[members // 2 :]),
        nonmember_aux=tuple(nonmember_ids[: nonmembers // 2]),
        nonmember_test=tuple(nonmember_ids[nonmembers // 2 :]),
    )


@dataclass(frozen=True)
class SiloData:
    """A silo's images and its split, as a one-client ``Splits`` (client index 0) the training code reads."""

    dataset: ImageDataset
    splits: Splits

    @property
    def split(self) -> ClientSplit:
        return self.splits.clients[0]

    def counts(self) -> dict[str, int]:
        """The split sizes: the only facts about its data a silo sends the server."""
        s = self.split
        sizes = {  # named like the sets of splits.json, so the reports show both alike
            "images": len(self.dataset),
            "member_aux": len(s.member_aux),
            "member_test": len(s.member_test),
            "nonmember_aux": len(s.nonmember_aux),
            "nonmember_test": len(s.nonmember_test),
            "skipped": len(self.dataset.skipped_files),
        }
        return {SILO_COUNT_PREFIX + k: v for k, v in sizes.items()}


_SILOS: dict[tuple, SiloData] = {}


def load_silo(node_config: Mapping[str, Any], cfg: ExperimentConfig) -> SiloData:
    """This SuperNode's data at the run's image size; cached per process (one silo per process)."""
    settings = SiloSettings.from_node_config(node_config, cfg)
    key = (settings, cfg.data.image_size)
    if key not in _SILOS:
        dataset = load_image_folder(settings.data_path, cfg.data.image_size, on_bad_image=settings.on_bad_image)
        split = silo_split(
            dataset.ids, settings.members, settings.nonmembers, settings.split_seed, str(settings.data_path)
        )
        splits = Splits(dataset.name, settings.split_seed, cfg.data.public_seed, (), (split,))
        _SILOS[key] = SiloData(dataset, splits)
    return _SILOS[key]


def uses_silo_data(cfg: ExperimentConfig) -> bool:
    return cfg.data.dataset == SILO_DATASET


def _server_has_no_silo_data(data: DataConfig) -> ImageDataset:
    raise DatasetError(
        f"data.dataset = {SILO_DATASET!r}: each SuperNode reads its own images (node_config {DATA_PATH!r}); "
        "nothing can load them centrally (simulation needs a named dataset such as 'mnist' or 'folder')"
    )


DATASETS.add(
    SILO_DATASET,
    DatasetSource(load=_server_has_no_silo_data),
    description=f"deployment only: each silo's own image folder, from its node config {DATA_PATH!r}",
)
