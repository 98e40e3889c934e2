import pytest

from fedlora.config import ConfigError, ExperimentConfig, load_config, loads_config, parse_override


def test_defaults_and_shipped_configs_load():
    assert ExperimentConfig().federation.aggregation == "fedavg"
    for name in ("smoke", "default", "pretrain", "paper-centralized", "paper-federated", "sd15"):
        cfg = load_config(f"configs/{name}.toml")
        assert cfg.run.seed == 0


def test_default_config_is_at_least_eight_clients_and_several_rounds():
    cfg = load_config("configs/default.toml")
    assert cfg.federation.num_clients >= 8 and cfg.federation.rounds >= 3


def test_unknown_key_names_the_key_and_allowed_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[federation]\nrouns = 3\n")
    with pytest.raises(ConfigError, match=r"federation\.rouns.*allowed keys.*rounds"):
        load_config(p)


def test_unknown_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[fed]\nrounds = 3\n")
    with pytest.raises(ConfigError, match=r"\[fed\]"):
        load_config(p)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("federation.rounds=1.5", r"federation\.rounds must be an integer"),
        ("train.learning_rate='fast'", r"train\.learning_rate must be a number"),
        ("data.dataset='cifar'", r"data\.dataset = 'cifar' is not allowed; choose one of \['mnist'"),
        ("federation.fraction_train=1.5", r"above the maximum"),
        ("data.members_per_client=7", r"must be even"),
        ("model.lora_targets=[]", r"must not be empty"),
        ("data.dataset='folder'", r"needs data\.data_dir"),
        (
            "train.method='dp-lora'",
            r"train\.method = 'dp-lora' is not allowed; choose one of \['lora', 'mp-lora', 'smp-lora'\]",
        ),
        ("evaluation.attacks=['learned-mlp', 'gsa']", r"evaluation\.attacks has \['gsa'\]; each entry must be one of"),
        ("evaluation.attacks=['learned-mlp', 'learned-mlp']", r"lists an entry twice"),
        ("privacy.attacker_dropout=1.0", r"privacy\.attacker_dropout = 1\.0 is above the maximum"),
        ("privacy.mi_lamda=0.1", r"unknown config key privacy\.mi_lamda; allowed keys in \[privacy\]"),
    ],
)
def test_bad_values_fail_at_load(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("configs/smoke.toml", [override])


def test_override_parsing_and_roundtrip():
    assert parse_override("federation.rounds=3") == ("federation.rounds", 3)
    assert parse_override("run.name=abc") == ("run.name", "abc")
    with pytest.raises(ConfigError, match="section.key"):
        parse_override("rounds=3")
    cfg = load_config("configs/default.toml", ["federation.rounds=2", "model.lora_targets=['to_q']"])
    assert cfg.federation.rounds == 2 and cfg.model.lora_targets == ("to_q",)
    assert loads_config(cfg.to_toml()) == cfg
    assert cfg.replace(**{"train.local_steps": 3}).train.local_steps == 3


NON_FINITE = [
    "train.learning_rate=nan",
    "train.learning_rate=inf",
    "train.max_grad_norm=nan",
    "privacy.dp_noise_multiplier=nan",
    "federation.round_timeout_s=inf",
]
ESCAPING_NAMES = ["../../escape", "", "a/b", "..", ".hidden", "x..y"]


@pytest.mark.parametrize("override", NON_FINITE)
def test_non_finite_numbers_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*finite"):
        load_config("configs/smoke.toml", [override])


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match="run.name"):
        load_config("configs/smoke.toml", [f"run.name={name!r}"])


@pytest.mark.parametrize("override", NON_FINITE + ["run.name='../../escape'", "run.name=''"])
def test_fedlora_run_refuses_bad_values_with_exit_2_and_leaves_no_folder(tmp_path, override, capsys):
    from fedlora.cli import main

    out = tmp_path / "runs"
    assert main(["run", "configs/smoke.toml", "--set", f"run.output_dir='{out}'", "--set", override]) == 2
    assert "config error:" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []
