"""Dropouts and late joiners (deployment): discovery starts with federation.min_clients nodes, each round
samples among the nodes online, a node that joins or comes back is used from the next round, and the
failures are counted per round. In one process, on a LocalGrid whose node set changes between rounds."""

import json

import pytest
from local_grid import LocalGrid
from silo_folders import make_silo_folder

from clients.app import app as client_app
from fedlora.config import ConfigError, load_config
from fedlora.outputs import SILOS_FILE, SUMMARY_FILE
from fedlora.protocol import DATA_PATH, PARTITION_ID, SILO_MEMBERS, SILO_NONMEMBERS, WARM
from server.app import run_federated
from server.membership import Membership


class ChangingGrid(LocalGrid):
    """A LocalGrid whose online nodes change after a round's train messages: ``after[r]`` is the set of
    offline partitions from then on (``offline`` before round 1)."""

    def __init__(self, client_app, num_nodes, offline=(), after=None):
        super().__init__(client_app, num_nodes)
        self.offline = {1000 + p for p in offline}
        self.after = {r: {1000 + p for p in ps} for r, ps in (after or {}).items()}

    def get_node_ids(self):
        return [n for n in self.contexts if n not in self.offline]

    def push_messages(self, messages):
        messages = list(messages)
        self.queries = getattr(self, "queries", []) + [
            m.content.config_records["config"] for m in messages if m.metadata.message_type == "query"
        ]
        ids = super().push_messages(messages)
        rounds = {
            m.content.config_records["config"].get("server-round")
            for m in messages
            if m.metadata.message_type.startswith("train") and "config" in m.content.config_records
        }
        for r in rounds:
            self.offline = self.after.get(r, self.offline)
        return ids


def test_min_clients_is_checked_at_load_naming_the_key():
    with pytest.raises(ConfigError, match=r"federation.min_clients = 3 exceeds federation.num_clients = 2"):
        load_config("configs/smoke.toml", ["federation.min_clients=3"])
    with pytest.raises(ConfigError, match=r"federation.min_clients"):
        load_config("configs/smoke.toml", ["federation.min_clients=-1"])


def test_discovery_proceeds_with_min_clients_and_names_the_key_when_too_few_come():
    grid = ChangingGrid(client_app, 3, offline=[2])
    members = Membership(3)
    members.discover(grid, 2, timeout=5)
    assert sorted(members.partition_of.values()) == [0, 1]
    with pytest.raises(RuntimeError, match=r"only 2 of the 3 clients .*federation.min_clients.* within 1 s"):
        Membership(3).discover(grid, 3, timeout=1)


def test_a_late_joiner_and_a_silo_back_under_a_new_node_id_are_admitted_at_the_next_refresh():
    grid = ChangingGrid(client_app, 3, offline=[2])
    members = Membership(3)
    members.discover(grid, 2)
    grid.offline = set()
    presence = members.refresh(grid)
    assert (presence.online, presence.joined, presence.left) == ([0, 1, 2], [2], [])
    # partition 1's SuperNode restarts without authentication: a new node id, the old one offline
    grid.contexts[2001] = grid.contexts.pop(1001)
    grid.contexts[2001].node_id = 2001
    presence = members.refresh(grid)
    assert presence.online == [0, 1, 2] and members.node_of[1] == 2001 and 1001 not in members.partition_of
    # a second node claiming partition 0 while its holder is online is not used
    grid.contexts[3000] = type(grid.contexts[1000])(
        run_id=1, node_id=3000, node_config={PARTITION_ID: 0}, state=grid.contexts[1000].state, run_config={}
    )
    assert members.refresh(grid).online == [0, 1, 2] and members.node_of[0] == 1000
    grid.offline = {1000, 3000}
    presence = members.refresh(grid)
    assert (presence.online, presence.left) == ([1, 2], [0])


@pytest.mark.parametrize("accounted", [False, True])
def test_a_round_samples_the_partitions_online_except_under_flowers_dp_accountant(accounted):
    import numpy as np

    from fedlora.rounds import RoundLog
    from fedlora.rules import build_rule
    from server.strategy import AccountedFedAvgStrategy, LoraStrategy

    grid = ChangingGrid(client_app, 4)
    members = Membership(4)
    members.discover(grid, 4)
    rule = build_rule(load_config(None, ["federation.num_clients=4"])).start(
        {"a.lora_A.weight": np.ones((1, 2)), "a.lora_B.weight": np.zeros((2, 1))}
    )
    cls = AccountedFedAvgStrategy if accounted else LoraStrategy
    strategy = cls(rule=rule, log=RoundLog(), partition_of=members.partition_of, fraction=0.5, seed=1, config_text="")
    strategy.membership = members
    grid.offline = {1001, 1002}
    available = strategy.available_partitions(1)
    # Flower's accountant sizes its noise for num_sampled of the population: offline ones are sampled (and fail)
    assert available == ([0, 1, 2, 3] if accounted else [0, 3]) and strategy.log[1].left == [1, 2]
    # fraction_train of those available; the accountant's count stays that of the whole federation
    assert len(strategy.sample_partitions(1, available)) == (2 if accounted else 1) and strategy.num_sampled == 2


def test_dp_fedavg_needs_every_client_at_discovery():
    with pytest.raises(ConfigError, match=r"'dp-fedavg' needs federation.min_clients = 0 \(all 3\), not 2"):
        load_config(
            "configs/smoke.toml", ["privacy.dp='dp-fedavg'", "federation.num_clients=3", "federation.min_clients=2"]
        )


def test_strict_discovery_refuses_a_partition_id_claimed_twice():
    grid = LocalGrid(client_app, 2)
    grid.contexts[1001].node_config[PARTITION_ID] = 0
    with pytest.raises(RuntimeError, match=r"partition ids \[0, 0\]; expected each at most once"):
        Membership(2).discover(grid, 2)


@pytest.mark.timeout(600)
def test_rounds_sample_the_nodes_online_and_a_node_that_comes_back_is_used_next_round(tmp_path):
    cfg = load_config(
        "configs/smoke.toml",
        [
            "data.dataset='silo'",
            f"run.output_dir='{tmp_path / 'runs'}'",
            "federation.num_clients=3",
            "federation.min_clients=2",
            "federation.rounds=3",
            "evaluation.attacks=['loss-threshold']",
            "evaluation.quality_samples=0",
            "simulation.fail_clients=['1@3']",  # partition 1 dies in round 3, after it was sampled
        ],
    )
    # partition 2 is not there at the start and joins after round 1, when partition 1 leaves; 1 is back after round 2
    grid = ChangingGrid(client_app, 3, offline=[2], after={1: [1], 2: []})
    for k, context in enumerate(grid.contexts.values()):
        folder = make_silo_folder(tmp_path / f"silo{k}", k, 12)
        context.node_config.update({DATA_PATH: str(folder), SILO_MEMBERS: 6, SILO_NONMEMBERS: 6})
    run_dir, _ = run_federated(grid, cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    r1, r2, r3 = rows[1:]
    assert (r1["online"], r1["sampled"], sorted(r1["clients"])) == ([0, 1], [0, 1], ["0", "1"])
    assert (r2["online"], r2["joined"], r2["left"], r2["sampled"]) == ([0, 2], [2], [1], [0, 2])
    assert sorted(r2["clients"]) == ["0", "2"] and r2["clients"]["2"]["rounds_trained"] == 1
    assert (r3["online"], r3["joined"], r3["sampled"]) == ([0, 1, 2], [1], [0, 1, 2])
    assert (r3["failed_replies"], r3["rejected_updates"], sorted(r3["clients"])) == (1, 0, ["0", "2"])
    assert r1["failed_replies"] == r2["failed_replies"] == 0
    assert rows[0]["discovery_s"] > 0
    assert grid.queries and not any(
        WARM in q for q in grid.queries
    )  # a deployment's ClientApp process would not keep it
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["failures"]["failed_replies"] == 1
    assert summary["privacy"]["silo_audit"]["silos_reported"] == [0, 1, 2]
    assert sorted(json.loads((run_dir / SILOS_FILE).read_text())["clients"]) == ["0", "1", "2"]


class _Discovered(Exception):
    pass


@pytest.mark.parametrize("simulation", [True, False])
def test_simulation_discovery_asks_the_workers_to_warm_up_deployment_does_not(simulation, tmp_path, monkeypatch):
    seen = {}

    def discover(self, grid, min_present, timeout=0):
        seen.update(warm=self.warm, config=self.config_text)
        raise _Discovered

    monkeypatch.setattr(Membership, "discover", discover)
    cfg = load_config("configs/smoke.toml", [f"run.output_dir='{tmp_path}'"])
    with pytest.raises(_Discovered):
        run_federated(ChangingGrid(client_app, 2), cfg, client_state=simulation)
    assert seen["warm"] is simulation
    assert (seen["config"] is not None) is simulation  # with the warm flag, the query carries the config
