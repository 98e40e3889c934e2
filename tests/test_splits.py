import numpy as np
import pytest

from fedlora.config import ConfigError, DataConfig
from fedlora.data import make_splits, public_subset
from fedlora.data.base import ImageDataset
from fedlora.data.splits import Splits


def toy_dataset(n=600, groups=10):
    rng = np.random.default_rng(0)
    return ImageDataset(
        name="toy",
        ids=tuple(f"toy-{i:04d}" for i in range(n)),
        images=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8),
        captions=tuple(f"caption {i % groups}" for i in range(n)),
        groups=tuple(str(i % groups) for i in range(n)),
    )


def all_private_ids(s: Splits):
    return [i for c in s.clients for i in c.members + c.nonmembers]


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_splits_are_disjoint_and_sized(partition):
    ds = toy_dataset()
    data = DataConfig(partition=partition, members_per_client=20, nonmembers_per_client=10, public_fraction=0.5)
    s = make_splits(ds, data, num_clients=8, seed=3)
    private = all_private_ids(s)
    assert len(private) == len(set(private)) == 8 * 30  # no sample in two places
    assert not set(private) & set(s.public)
    assert len(s.public) == 300
    for c in s.clients:
        assert len(c.member_aux) == len(c.member_test) == 10
        assert len(c.nonmember_aux) == len(c.nonmember_test) == 5
        assert set(c.members) == set(c.member_aux) | set(c.member_test)


def test_splits_are_deterministic_and_seed_dependent():
    ds = toy_dataset()
    data = DataConfig(members_per_client=20, nonmembers_per_client=10)
    a, b = make_splits(ds, data, 4, seed=1), make_splits(ds, data, 4, seed=1)
    assert a == b
    c = make_splits(ds, data, 4, seed=2)
    assert c.clients != a.clients
    assert c.public == a.public  # the public split belongs to the base model, not to the run seed


def test_public_subset_matches_splits():
    ds = toy_dataset()
    data = DataConfig(members_per_client=20, nonmembers_per_client=10)
    assert public_subset(ds, data).ids == make_splits(ds, data, 4, seed=9).public


def test_dirichlet_is_skewed_and_iid_is_not():
    ds = toy_dataset(n=2000)
    counts = {}
    for partition in ("iid", "dirichlet"):
        data = DataConfig(partition=partition, dirichlet_alpha=0.1, members_per_client=40, nonmembers_per_client=20)
        s = make_splits(ds, data, 8, seed=0)
        group_of = dict(zip(ds.ids, ds.groups))
        # share of each client's most common group
        counts[partition] = np.mean(
            [
                max(np.unique([group_of[i] for i in c.members + c.nonmembers], return_counts=True)[1]) / 60
                for c in s.clients
            ]
        )
    assert counts["dirichlet"] > 0.5 > counts["iid"]


def test_too_many_clients_is_a_clear_error():
    with pytest.raises(ConfigError, match="exceeds the 300 private samples"):
        make_splits(toy_dataset(), DataConfig(members_per_client=40, nonmembers_per_client=40), 8, seed=0)


def test_json_roundtrip(tmp_path):
    s = make_splits(toy_dataset(), DataConfig(members_per_client=20, nonmembers_per_client=10), 3, seed=0)
    s.save(tmp_path / "splits.json")
    assert Splits.load(tmp_path / "splits.json") == s
