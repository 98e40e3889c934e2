"""Membership splits: public vs private data, client partitions, and the paper's protocol.

Within each client (SMP-LoRA, arXiv 2402.11989, section 1.7 of our notes): training members
D_tr = D^m_aux + D^m_te, and never-trained local non-members D^nm_aux + D^nm_te drawn from
the same local distribution. Everything is keyed by stable sample ids and seeded, so a
split can be rebuilt and audited from ``splits.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError, DataConfig
from .base import ImageDataset

SPLITS_VERSION = 1


@dataclass(frozen=True)
class ClientSplit:
    client_id: int
    member_aux: tuple[str, ...]
    member_test: tuple[str, ...]
    nonmember_aux: tuple[str, ...]
    nonmember_test: tuple[str, ...]

    @property
    def members(self) -> tuple[str, ...]:
        """D_tr: every member is trained on, including those the proxy attacker sees."""
        return self.member_aux + self.member_test

    @property
    def nonmembers(self) -> tuple[str, ...]:
        return self.nonmember_aux + self.nonmember_test


@dataclass(frozen=True)
class Splits:
    dataset: str
    seed: int
    public_seed: int
    public: tuple[str, ...]
    clients: tuple[ClientSplit, ...]

    def to_json(self) -> dict:
        return {
            "version": SPLITS_VERSION,
            "dataset": self.dataset,
            "seed": self.seed,
            "public_seed": self.public_seed,
            "public": list(self.public),
            "clients": {
                str(c.client_id): {
                    "members": list(c.members),
                    "member_aux": list(c.member_aux),
                    "member_test": list(c.member_test),
                    "nonmember_aux": list(c.nonmember_aux),
                    "nonmember_test": list(c.nonmember_test),
                }
                for c in self.clients
            },
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        return cls.from_json(json.loads(Path(path).read_text()))

    @classmethod
    def from_json(cls, raw: dict) -> Splits:
        """``to_json``'s inverse; a missing key raises KeyError naming it (``fedlora.run_files`` reports it)."""
        clients = tuple(
            ClientSplit(
                client_id=int(cid),
                member_aux=tuple(c["member_aux"]),
                member_test=tuple(c["member_test"]),
                nonmember_aux=tuple(c["nonmember_aux"]),
                nonmember_test=tuple(c["nonmember_test"]),
            )
            for cid, c in sorted(raw["clients"].items(), key=lambda kv: int(kv[0]))
        )
        return cls(raw["dataset"], raw["seed"], raw["public_seed"], tuple(raw["public"]), clients)


def public_private_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``range(n)``; sorted so the result does not depend on numpy's shuffle order."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    return np.sort(order[:k]), np.sort(order[k:])


def partition_pool(
    groups: Sequence[str],
    num_clients: int,
    per_client: int,
    partition: str,
    alpha: float,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Disjoint positions into ``groups`` for each client, ``per_client`` each.

    IID draws uniformly. Dirichlet gives client k the group mixture q_k ~ Dir(alpha)
    (label skew as in Hsu et al. 2019) and fills it without replacement, re-normalising
    over groups that still have samples when one runs dry.
    """
    n = len(groups)
    need = num_clients * per_client
    if need > n:
        raise ConfigError(
            f"{num_clients} clients x {per_client} samples (members + non-members) = {need} "
            f"exceeds the {n} private samples; lower federation.num_clients, "
            "data.members_per_client / data.nonmembers_per_client, or data.public_fraction"
        )
    if partition == "iid":
        order = rng.permutation(n)
        return [np.sort(order[k * per_client : (k + 1) * per_client]) for k in range(num_clients)]
    names = sorted(set(groups))
    pools = {g: list(rng.permutation([i for i in range(n) if groups[i] == g])) for g in names}
    out = []
    for _ in range(num_clients):
        q = rng.dirichlet(np.full(len(names), alpha))
        chosen: list[int] = []
        while len(chosen) < per_client:
            avail = np.array([len(pools[g]) > 0 for g in names], dtype=float)
            p = q * avail
            p = p / p.sum() if p.sum() > 0 else avail / avail.sum()
            g = names[rng.choice(len(names), p=p)]
            chosen.append(pools[g].pop())
        out.append(np.sort(np.asarray(chosen)))
    return out


def make_splits(dataset: ImageDataset, data: DataConfig, num_clients: int, seed: int) -> Splits:
    """Public split from ``data.public_seed``; client partition and membership from ``seed``."""
    public_idx, private_idx = public_private_indices(len(dataset), data.public_fraction, data.public_seed)
    rng = np.random.default_rng([seed, 1])
    m, nm = data.members_per_client, data.nonmembers_per_client
    private_groups = [dataset.groups[i] for i in private_idx]
    pools = partition_pool(private_groups, num_clients, m + nm, data.partition, data.dirichlet_alpha, rng)
    clients = []
    for k, pos in enumerate(pools):
        ids = [dataset.ids[private_idx[p]] for p in rng.permutation(pos)]
        members, nonmembers = ids[:m], ids[m:]
        clients.append(
            ClientSplit(
                client_id=k,
                member_aux=tuple(members[: m // 2]),
                member_test=tuple(members[m // 2 :]),
                nonmember_aux=tuple(nonmembers[: nm // 2]),
                nonmember_test=tuple(nonmembers[nm // 2 :]),
            )
        )
    return Splits(
        dataset=dataset.name,
        seed=seed,
        public_seed=data.public_seed,
        public=tuple(dataset.ids[i] for i in public_idx),
        clients=tuple(clients),
    )


def public_subset(dataset: ImageDataset, data: DataConfig) -> ImageDataset:
    """The samples a base model may be pretrained on (never any client's members or non-members)."""
    public_idx, _ = public_private_indices(len(dataset), data.public_fraction, data.public_seed)
    return dataset.subset(public_idx)
