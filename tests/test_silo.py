"""Per-silo data (deployment, data.dataset = "silo"): the node-config settings, the local split, and a
whole per-silo federation in one process (LocalGrid), audited by the silos themselves."""

import json

import numpy as np
import pytest
from local_grid import LocalGrid
from silo_folders import make_silo_folder

from clients.app import app as client_app
from fedlora.config import ConfigError, load_config
from fedlora.data import DatasetError
from fedlora.data.silo import SiloSettings, load_silo, silo_split
from fedlora.outputs import SILOS_FILE, SPLITS_FILE, SUMMARY_FILE
from fedlora.preflight import preflight
from fedlora.protocol import (
    DATA_PATH,
    NODE_STATE_DIR,
    SILO_MEMBERS,
    SILO_NONMEMBERS,
    SILO_ON_BAD_IMAGE,
    SILO_SPLIT_SEED,
)
from server.app import run_federated

SILO = ["data.dataset='silo'"]
IDS = tuple(f"folder-img_{k:03d}.png" for k in range(20))


def smoke(*overrides):
    return load_config("configs/smoke.toml", [*SILO, *overrides])


def test_local_split_is_seeded_disjoint_and_independent_of_listing_order():
    split = silo_split(IDS, 6, 8, seed=3)
    again = silo_split(tuple(reversed(IDS)), 6, 8, seed=3)
    assert split == again
    assert (len(split.member_aux), len(split.member_test)) == (3, 3)
    assert (len(split.nonmember_aux), len(split.nonmember_test)) == (4, 4)
    assert not set(split.members) & set(split.nonmembers)
    assert silo_split(IDS, 6, 8, seed=4).members != split.members


def test_local_split_refuses_a_folder_too_small_naming_the_keys():
    with pytest.raises(DatasetError, match=r"/data/silo0: 12 members \+ 10 non-members = 22 .* has 20.*'members'"):
        silo_split(IDS, 12, 10, seed=0, where="/data/silo0")


def test_settings_default_to_the_run_config_and_read_node_config():
    cfg = smoke("run.seed=5")
    s = SiloSettings.from_node_config({DATA_PATH: "/x"}, cfg)
    assert (s.members, s.nonmembers, s.split_seed, s.on_bad_image) == (8, 8, 5, "error")
    node = {DATA_PATH: "/x", SILO_MEMBERS: 4, SILO_NONMEMBERS: 6, SILO_SPLIT_SEED: 9, SILO_ON_BAD_IMAGE: "skip"}
    s = SiloSettings.from_node_config(node, cfg)
    assert (str(s.data_path), s.members, s.nonmembers, s.split_seed, s.on_bad_image) == ("/x", 4, 6, 9, "skip")


@pytest.mark.parametrize(
    "node, message",
    [
        ({"partition-id": 0}, r"no 'data-path'.*--node-config"),
        ({DATA_PATH: 3}, r"'data-path' must be a str"),
        ({DATA_PATH: "/x", SILO_MEMBERS: "8"}, r"'members' must be a int"),
        ({DATA_PATH: "/x", SILO_MEMBERS: True}, r"'members' must be a int"),
        ({DATA_PATH: "/x", SILO_NONMEMBERS: 1}, r"'nonmembers' = 1 must be at least 2"),
        ({DATA_PATH: "/x", SILO_ON_BAD_IMAGE: "ignore"}, r"'on-bad-image' = 'ignore'; choose one of"),
    ],
)
def test_bad_node_config_names_the_key(node, message):
    with pytest.raises(ConfigError, match=message):
        SiloSettings.from_node_config(node, smoke())


@pytest.mark.parametrize("captions", ["jsonl", "txt"])
def test_load_silo_reads_the_folder_and_counts_only(tmp_path, captions):
    folder = make_silo_folder(tmp_path / "silo", 0, 10, captions=captions)
    silo = load_silo({DATA_PATH: str(folder), SILO_MEMBERS: 4, SILO_NONMEMBERS: 4}, smoke())
    assert len(silo.dataset) == 10 and silo.dataset.captions[0].startswith("a handwritten digit")
    counts = silo.counts()
    assert counts == {
        "silo-images": 10,
        "silo-member_aux": 2,
        "silo-member_test": 2,
        "silo-nonmember_aux": 2,
        "silo-nonmember_test": 2,
        "silo-skipped": 0,
    }


def test_missing_folder_and_missing_caption_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_silo({DATA_PATH: str(tmp_path / "nope")}, smoke())
    folder = make_silo_folder(tmp_path / "silo", 0, 4, captions="txt")
    (folder / "img_002.txt").unlink()
    with pytest.raises(DatasetError, match=r"img_002.png: no caption"):
        load_silo({DATA_PATH: str(folder), SILO_MEMBERS: 2, SILO_NONMEMBERS: 2}, smoke())


def test_simulation_refuses_silo_data():
    with pytest.raises(DatasetError, match=r"each SuperNode reads its own images"):
        preflight(smoke())


@pytest.mark.timeout(600)
def test_a_per_silo_federation_audits_at_the_silos(tmp_path):
    cfg = smoke(
        f"run.output_dir='{tmp_path / 'runs'}'",
        "federation.rounds=2",
        "train.method='smp-lora'",
        "evaluation.attacks=['loss-threshold']",
        "evaluation.quality_samples=0",
    )
    grid = LocalGrid(client_app, cfg.federation.num_clients)
    for k, context in enumerate(grid.contexts.values()):
        folder = make_silo_folder(tmp_path / f"silo{k}", k, 12 + k)
        context.node_config.update({DATA_PATH: str(folder), SILO_MEMBERS: 6, SILO_NONMEMBERS: 6})
    run_dir, final = run_federated(grid, cfg)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    privacy = summary["privacy"]
    assert privacy["global"] == {} and set(privacy["silos"]) == {"0", "1"}
    for k in ("0", "1"):
        entry = privacy["silos"][k]["loss-threshold"]
        assert 0.0 <= entry["auc"] <= 1.0 and entry["n_members"] == 3 and entry["n_nonmembers"] == 3
    audit = privacy["silo_audit"]
    assert audit["silos_reported"] == [0, 1] and audit["withheld"] == []
    aucs = [privacy["silos"][k]["loss-threshold"]["auc"] for k in ("0", "1")]
    assert audit["attacks"]["loss-threshold"]["auc_mean"] == pytest.approx(sum(aucs) / 2)
    silos = json.loads((run_dir / SILOS_FILE).read_text())["clients"]
    assert silos["1"]["images"] == 13 and silos["0"]["member_aux"] == 3
    assert not (run_dir / SPLITS_FILE).exists()  # the server never had a sample id
    text = (run_dir / SUMMARY_FILE).read_text() + (run_dir / SILOS_FILE).read_text()
    assert "img_0" not in text and "handwritten" not in text  # no file name or caption reached the server
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and "member_loss" not in rows[1]
    assert any(abs(v).max() > 0 for key, v in final.lora.items() if "lora_B" in key)


def test_a_dp_run_keeps_the_silo_audit_in(tmp_path):
    from fedlora.data.silo import load_silo as load
    from fedlora.evaluation.silo import audit_silo
    from fedlora.models.lora import ModelView
    from fedlora.protocol import AUDIT_WITHHELD

    cfg = smoke("privacy.dp='dp-lora'", "evaluation.attacks=['loss-threshold']")
    folder = make_silo_folder(tmp_path / "silo", 0, 8)
    silo = load({DATA_PATH: str(folder), SILO_MEMBERS: 4, SILO_NONMEMBERS: 4}, cfg)
    assert audit_silo(cfg, None, silo, ModelView(), 0) == ({AUDIT_WITHHELD: 1}, {})


def test_evaluate_refuses_a_per_silo_run(tmp_path):
    from fedlora.outputs import CONFIG_FILE
    from fedlora.reevaluate import evaluate_run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text(smoke().to_toml())
    (run_dir / SUMMARY_FILE).write_text("{}")
    (run_dir / "status.json").write_text('{"status": "complete"}')
    with pytest.raises(ConfigError, match=r"per-silo run .* audit ran at the silos"):
        evaluate_run(run_dir)


class RestartingGrid(LocalGrid):
    """Node 0's SuperNode "restarts" before round 2: its context.state comes back empty, as Flower's does."""

    def push_messages(self, messages):
        messages = list(messages)
        for msg in messages:
            config = msg.content.config_records.get("config")
            if msg.metadata.message_type.startswith("train") and config and config.get("server-round") == 2:
                first = min(self.contexts)
                if msg.metadata.dst_node_id == first:
                    self.contexts[first].state = type(self.contexts[first].state)()
        return super().push_messages(messages)


def silo_run(tmp_path, name, grid_cls, state_dir: bool, *overrides):
    cfg = smoke(
        f"run.output_dir='{tmp_path / name}'",
        "federation.rounds=2",
        "evaluation.attacks=[]",
        "evaluation.quality_samples=0",
        *overrides,
    )
    grid = grid_cls(client_app, cfg.federation.num_clients)
    for k, context in enumerate(grid.contexts.values()):
        folder = make_silo_folder(tmp_path / f"silo{k}", k, 12)
        context.node_config.update({DATA_PATH: str(folder), SILO_MEMBERS: 6, SILO_NONMEMBERS: 6})
        if state_dir:
            context.node_config[NODE_STATE_DIR] = str(tmp_path / name / f"state{k}")
    run_dir, final = run_federated(grid, cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows[2]["clients"]["0"], final


@pytest.mark.timeout(600)
def test_a_restarted_supernode_keeps_its_dp_accountant_in_its_state_dir(tmp_path):
    dp = ("train.method='lora'", "privacy.dp='dp-lora'")
    steady, _ = silo_run(tmp_path, "steady", LocalGrid, False, *dp)
    restarted, _ = silo_run(tmp_path, "restarted", RestartingGrid, True, *dp)
    forgot, _ = silo_run(tmp_path, "forgot", RestartingGrid, False, *dp)
    assert steady["rounds_trained"] == restarted["rounds_trained"] == 2 and forgot["rounds_trained"] == 1
    # the DP-SGD accountant kept accumulating: the same ε as a SuperNode that never restarted
    assert (
        restarted["dp_epsilon"] == pytest.approx(steady["dp_epsilon"]) and forgot["dp_epsilon"] < steady["dp_epsilon"]
    )
    assert list((tmp_path / "restarted" / "state0").glob("run-*/"))


@pytest.mark.timeout(600)
def test_a_restarted_supernode_keeps_its_proxy_attacker_in_its_state_dir(tmp_path):
    smp = ("train.method='smp-lora'",)
    _, steady = silo_run(tmp_path, "steady", LocalGrid, False, *smp)
    _, restarted = silo_run(tmp_path, "restarted", RestartingGrid, True, *smp)
    _, forgot = silo_run(tmp_path, "forgot", RestartingGrid, False, *smp)
    for key, value in steady.lora.items():  # the attacker came back as it was: the same global model
        np.testing.assert_array_equal(restarted.lora[key], value)
    assert any(not np.array_equal(forgot.lora[k], v) for k, v in steady.lora.items())  # without it, another


def test_state_dir_must_be_a_path():
    from flwr.app import Context, RecordDict

    from clients.handlers import state_dir_of

    context = Context(run_id=7, node_id=1, node_config={NODE_STATE_DIR: 3}, state=RecordDict(), run_config={})
    with pytest.raises(ConfigError, match=r"'state-dir' must be a folder path"):
        state_dir_of({}, context)
    context.node_config[NODE_STATE_DIR] = "/silo/state"
    assert state_dir_of({}, context) == "/silo/state/run-7"


def test_a_silo_without_its_folder_fails_discovery_naming_the_key(tmp_path):
    cfg = smoke(f"run.output_dir='{tmp_path / 'runs'}'", "evaluation.quality_samples=0")
    grid = LocalGrid(client_app, cfg.federation.num_clients)
    first = min(grid.contexts)
    grid.contexts[first].node_config[DATA_PATH] = str(make_silo_folder(tmp_path / "silo0", 0, 16))
    with pytest.raises(RuntimeError, match=r"client discovery: 1 of 2 answered.*node_config has no \W+data-path"):
        run_federated(grid, cfg)


class ServerKilled(BaseException):
    """The ServerApp process dying outright (not an exception the run could handle)."""


class DyingGrid(LocalGrid):
    """The server dies in round 2 after the silos trained it (their round-2 state is on disk, the server's is not)."""

    def push_messages(self, messages):
        messages = list(messages)
        ids = super().push_messages(messages)
        config = messages[0].content.config_records.get("config") if messages else None
        if messages[0].metadata.message_type.startswith("train") and config and config.get("server-round") == 2:
            raise ServerKilled
        return ids


def silo_grid(tmp_path, cfg, grid_cls=LocalGrid, *, run_id=1, state=True):
    grid = grid_cls(client_app, cfg.federation.num_clients)
    for k, context in enumerate(grid.contexts.values()):
        context.run_id = run_id  # a resumed run is a new Flower run: new run id, empty context.state
        folder = make_silo_folder(tmp_path / f"silo{k}", k, 12)
        context.node_config.update({DATA_PATH: str(folder), SILO_MEMBERS: 6, SILO_NONMEMBERS: 6})
        if state:
            context.node_config[NODE_STATE_DIR] = str(tmp_path / f"state{k}")
    return grid


@pytest.mark.timeout(600)
def test_a_killed_server_resumed_in_deployment_ends_with_the_uninterrupted_adapter(tmp_path):
    import shutil

    from fedlora import checkpoint

    def cfg(name):
        return smoke(
            f"run.output_dir='{tmp_path / name}'",
            "federation.rounds=2",
            "train.method='smp-lora'",
            "evaluation.attacks=[]",
            "evaluation.quality_samples=0",
        )

    _, steady = run_federated(silo_grid(tmp_path / "a", cfg("steady")), cfg("steady"))
    with pytest.raises(ServerKilled):
        run_federated(silo_grid(tmp_path / "b", cfg("killed"), DyingGrid), cfg("killed"))
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert checkpoint.read_status(run_dir)["last_complete_round"] == 1
    shutil.copytree(run_dir, tmp_path / "copy")
    resumed_dir, resumed = run_federated(
        silo_grid(tmp_path / "b", cfg("killed"), run_id=2), cfg("killed"), resume=run_dir
    )
    for key, value in steady.lora.items():  # the silos found their round-1 state under the run's key
        np.testing.assert_array_equal(resumed.lora[key], value)
    rows = [json.loads(line) for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["clients"]["0"]["rounds_trained"] == 2
    # control: silos whose state is not found (no state-dir) restart their proxy attackers: another adapter
    _, forgot = run_federated(
        silo_grid(tmp_path / "b", cfg("killed"), run_id=3, state=False), cfg("killed"), resume=tmp_path / "copy"
    )
    assert any(not np.array_equal(forgot.lora[k], v) for k, v in steady.lora.items())


def test_the_run_config_resume_names_an_absolute_run_folder_without_overrides(tmp_path):
    from server.app import resume_from_run_config

    assert resume_from_run_config({"resume": ""}) is None
    assert resume_from_run_config({"resume": str(tmp_path), "overrides": ""}) == tmp_path
    with pytest.raises(ConfigError, match=r"'resume' = 'runs/x' must be an absolute path"):
        resume_from_run_config({"resume": "runs/x"})
    with pytest.raises(ConfigError, match=r"'overrides' must be empty"):
        resume_from_run_config({"resume": str(tmp_path), "overrides": "federation.rounds=3"})


def test_a_state_dir_folder_is_named_by_the_servers_run_key():
    from flwr.app import Context, RecordDict

    from clients.handlers import state_dir_of
    from fedlora.protocol import RUN_KEY

    context = Context(
        run_id=7, node_id=1, node_config={NODE_STATE_DIR: "/silo/state"}, state=RecordDict(), run_config={}
    )
    assert state_dir_of({RUN_KEY: "3f2a9c01bb7e"}, context) == "/silo/state/run-3f2a9c01bb7e"
    with pytest.raises(ValueError, match=r"is no folder name"):
        state_dir_of({RUN_KEY: "../../etc"}, context)
