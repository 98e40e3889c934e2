"""One typed experiment config: defaults, TOML loading, ``--set`` overrides, validation.

Every key is declared once here (section dataclasses); unknown or ill-typed keys fail at
load time with the key's dotted name and what is allowed, before any model is built.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_args, get_origin

EMBEDDED_BASE = "embedded"


class ConfigError(ValueError):
    """A config key is unknown, ill-typed or out of range; the message names it."""


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs"


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["mnist", "digits", "openmoji", "folder"] = "mnist"
    data_dir: str = ""
    image_size: int = 32
    on_bad_image: Literal["error", "skip"] = "error"
    # The public split trains the base model; it depends on public_seed, never on run.seed,
    # so that every run with the same base keeps its private data unseen by that base.
    public_fraction: float = 0.5
    public_seed: int = 0
    partition: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: float = 0.5
    members_per_client: int = 32
    nonmembers_per_client: int = 32


@dataclass(frozen=True)
class ModelConfig:
    base_model: str = EMBEDDED_BASE
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # How A starts (B always starts at 0): peft's Kaiming-uniform, or N(0, 1/r) as the
    # implicit-DP argument of arXiv 2409.17538 assumes.
    lora_a_init: Literal["kaiming-uniform", "gaussian"] = "kaiming-uniform"


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["lora", "mp-lora", "smp-lora"] = "lora"
    local_steps: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class PrivacyConfig:
    """The MP-/SMP-LoRA defence: lambda, the stabiliser delta and each client's proxy attacker.

    mi_lambda: the paper uses 0.05 in every reported experiment; the released scripts pass
    --param_alpha=1 (lambda = 1), which its Table 6 shows costs quality.
    """

    mi_lambda: float = 0.05
    stabilizer: float = 1e-5
    attacker_steps: int = 1  # k attacker updates per LoRA step
    attacker_batch_size: int = 4  # members and as many non-members per attacker update
    attacker_learning_rate: float = 1e-5
    attacker_weight_decay: float = 1e-4
    attacker_dropout: float = 0.5
    # Differential privacy. dp-fedavg: Flower's central DP wrapper (update clipping at
    # dp_max_grad_norm + Gaussian noise, RDP accountant, user-level); dp-lora: per-sample DP-SGD on
    # the LoRA parameters with Opacus (sample-level, per client); implicit-dp: A frozen at
    # N(0, 1/r) and B-gradient rows scaled to dp_max_grad_norm (a heuristic, never a formal epsilon).
    dp: Literal["none", "dp-fedavg", "dp-lora", "implicit-dp"] = "none"
    dp_noise_multiplier: float = 1.0
    dp_max_grad_norm: float = 1.0
    dp_delta: float = 1e-5
    dp_clipping: Literal["server", "client"] = "server"  # dp-fedavg: who clips the updates


@dataclass(frozen=True)
class FederationConfig:
    num_clients: int = 8
    rounds: int = 5
    fraction_train: float = 1.0
    aggregation: Literal["fedavg", "ffa", "flora", "svd", "fedsa"] = "fedavg"
    # LoRA rank per client for the heterogeneous-rank rules (svd, flora), cycled over client ids;
    # empty: every client uses model.lora_rank.
    client_ranks: tuple[int, ...] = ()
    round_timeout_s: float = 3600.0


@dataclass(frozen=True)
class SimulationConfig:
    num_cpus_per_client: int = 1
    num_gpus_per_client: float = 0.0
    ray_address: str = ""  # "" starts a private local Ray instance
    ray_num_cpus: int = 0  # 0: all cores of this machine


@dataclass(frozen=True)
class EvaluationConfig:
    num_samples: int = 16
    sample_steps: int = 25
    guidance_scale: float = 3.0
    eval_members: int = 64
    loss_timesteps: int = 8
    quality_samples: int = 64  # generated images for the caption probe (0 turns it off)
    kid_fid: bool = False  # KID/FID with the offline Inception network (about 0.1-2 s per image on CPU)
    kid_fid_samples: int = 64
    # Membership-inference evaluation of the final global model and of each client's last update.
    # pia, secmi, score-norm and gradient-norm are opt-in (fedlora/evaluation/attacks/).
    attacks: tuple[
        Literal["learned-mlp-paper", "learned-mlp", "loss-threshold", "pia", "secmi", "score-norm", "gradient-norm"], ...
    ] = (
        "learned-mlp-paper",
        "learned-mlp",
        "loss-threshold",
    )
    attack_clients: bool = True
    attack_epochs: int = 100
    attack_batch_size: int = 8  # members and as many non-members per batch
    attack_learning_rate: float = 1e-5
    attack_weight_decay: float = 1e-4
    attack_val_fraction: float = 0.25  # aux held out to pick the honest attack's epoch and threshold
    attack_feature_draws: int = 1  # (t, eps) draws averaged into one loss map; the paper uses 1
    loss_attack_draws: int = 16
    # Diffusion-specific attacks; each candidate list is searched on D_aux only (best aux AUC).
    # Timesteps index the scheduler's 1000-step schedule and must lie below its num_train_timesteps.
    pia_timesteps: tuple[int, ...] = (50, 100, 200, 300)
    secmi_t: int = 100  # SecMI's t_sec
    secmi_k: int = 10  # SecMI's DDIM step size
    score_norm_timesteps: tuple[int, ...] = (1, 10, 25, 50, 100, 200)
    score_norm_p: float = 4.0  # SimA's norm (the released code sums |eps|^4)
    gradient_norm_timesteps: tuple[int, ...] = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)
    # pia/secmi/score-norm: "paper" keeps the published sign (lower error or norm = member);
    # "from-aux" lets D_aux flip it where members score the other way (details["sign"] = -1).
    diffusion_attack_sign: Literal["from-aux", "paper"] = "from-aux"


@dataclass(frozen=True)
class PretrainConfig:
    """How ``fedlora pretrain`` builds a base model from the public split only."""

    output_dir: str = "fedlora/assets/base"
    seed: int = 0
    vae_steps: int = 800
    vae_batch_size: int = 32
    vae_learning_rate: float = 1e-3
    unet_steps: int = 3000
    unet_batch_size: int = 64
    unet_learning_rate: float = 5e-4
    caption_dropout: float = 0.1


@dataclass(frozen=True)
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(self):
            section = dataclasses.asdict(getattr(self, f.name))
            out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        return out

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def replace(self, **dotted: Any) -> "ExperimentConfig":
        """A copy with ``section.key`` values replaced (validated like a file)."""
        return from_dict(_merge(self.to_dict(), _nest(dotted)))


_RANGES: dict[str, tuple[float | None, float | None]] = {
    "data.image_size": (8, 512),
    "data.public_fraction": (0.0, 0.95),
    "data.dirichlet_alpha": (1e-6, None),
    "data.members_per_client": (2, None),
    "data.nonmembers_per_client": (2, None),
    "model.lora_rank": (1, None),
    "model.lora_alpha": (1e-9, None),
    "train.local_steps": (1, None),
    "train.batch_size": (1, None),
    "train.learning_rate": (1e-12, None),
    "train.max_grad_norm": (0.0, None),
    "federation.num_clients": (1, None),
    "federation.rounds": (1, None),
    "federation.fraction_train": (1e-9, 1.0),
    "federation.round_timeout_s": (1.0, None),
    "simulation.num_cpus_per_client": (1, None),
    "simulation.num_gpus_per_client": (0.0, None),
    "simulation.ray_num_cpus": (0, None),
    "evaluation.num_samples": (1, None),
    "evaluation.sample_steps": (1, None),
    "evaluation.guidance_scale": (0.0, None),
    "evaluation.eval_members": (1, None),
    "evaluation.loss_timesteps": (1, None),
    "evaluation.quality_samples": (0, None),
    "evaluation.kid_fid_samples": (2, None),
    "evaluation.attack_epochs": (1, None),
    "evaluation.attack_batch_size": (1, None),
    "evaluation.attack_learning_rate": (1e-12, None),
    "evaluation.attack_weight_decay": (0.0, None),
    "evaluation.attack_val_fraction": (0.05, 0.75),
    "evaluation.loss_attack_draws": (1, None),
    "evaluation.attack_feature_draws": (1, None),
    "evaluation.secmi_t": (1, None),
    "evaluation.secmi_k": (1, None),
    "evaluation.score_norm_p": (1.0, None),
    "privacy.mi_lambda": (0.0, None),
    "privacy.stabilizer": (1e-12, None),
    "privacy.attacker_steps": (0, None),
    "privacy.attacker_batch_size": (1, None),
    "privacy.attacker_learning_rate": (1e-12, None),
    "privacy.attacker_weight_decay": (0.0, None),
    "privacy.attacker_dropout": (0.0, 0.99),
    "privacy.dp_noise_multiplier": (0.0, None),
    "privacy.dp_max_grad_norm": (1e-12, None),
    "privacy.dp_delta": (1e-15, 0.5),
    "pretrain.vae_steps": (0, None),
    "pretrain.vae_batch_size": (1, None),
    "pretrain.vae_learning_rate": (1e-12, None),
    "pretrain.unet_steps": (1, None),
    "pretrain.unet_batch_size": (1, None),
    "pretrain.unet_learning_rate": (1e-12, None),
    "pretrain.caption_dropout": (0.0, 1.0),
}


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin is Literal:
        allowed = get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin is tuple:
        item = get_args(annotation)[0]
        if item is int:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{key} must be a list of integers, got {value!r}")
            if any(v < 1 for v in value):
                raise ConfigError(f"{key} = {list(value)!r}: every entry must be at least 1")
            return tuple(value)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        if get_origin(item) is Literal:
            bad = [v for v in value if v not in get_args(item)]
            if bad:
                raise ConfigError(f"{key} has {bad!r}; each entry must be one of {list(get_args(item))}")
            if len(set(value)) != len(value):
                raise ConfigError(f"{key} lists an entry twice: {list(value)!r}")
            return tuple(value)
        if not value:
            raise ConfigError(f"{key} must not be empty")
        return tuple(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        value = float(value)
    elif annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
    lo, hi = _RANGES.get(key, (None, None))
    if lo is not None and value < lo:
        raise ConfigError(f"{key} = {value!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} = {value!r} is above the maximum {hi}")
    return value


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from nested sections; missing keys take defaults."""
    sections = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    built: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown config section [{name}]; allowed sections: {sorted(sections)}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"[{name}] must be a table of keys, got {value!r}")
    for name, f in sections.items():
        cls = f.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        given = dict(raw.get(name, {}))
        kwargs = {}
        for key, value in given.items():
            if key not in hints:
                raise ConfigError(f"unknown config key {name}.{key}; allowed keys in [{name}]: {sorted(hints)}")
            kwargs[key] = _check_value(f"{name}.{key}", value, hints[key])
        built[name] = cls(**kwargs)
    cfg = ExperimentConfig(**built)
    _check_consistency(cfg)
    return cfg


def _check_consistency(cfg: ExperimentConfig) -> None:
    if cfg.data.dataset == "folder" and not cfg.data.data_dir:
        raise ConfigError("data.dataset = 'folder' needs data.data_dir (a folder of captioned images)")
    if cfg.data.image_size % 8:
        raise ConfigError(f"data.image_size = {cfg.data.image_size} must be a multiple of 8")
    for key in ("members_per_client", "nonmembers_per_client"):
        if getattr(cfg.data, key) % 2:
            raise ConfigError(f"data.{key} must be even (half aux, half test), got {getattr(cfg.data, key)}")
    for key in ("pia_timesteps", "score_norm_timesteps", "gradient_norm_timesteps"):
        if not getattr(cfg.evaluation, key):
            raise ConfigError(f"evaluation.{key} must list at least one timestep")
    if cfg.evaluation.secmi_k > cfg.evaluation.secmi_t:
        raise ConfigError(
            f"evaluation.secmi_k = {cfg.evaluation.secmi_k} must not exceed evaluation.secmi_t = {cfg.evaluation.secmi_t}"
        )
    rule, dp = cfg.federation.aggregation, cfg.privacy.dp
    if cfg.federation.client_ranks and rule not in ("svd", "flora"):
        raise ConfigError(
            f"federation.client_ranks = {list(cfg.federation.client_ranks)} needs a heterogeneous-rank rule "
            f"(federation.aggregation = 'svd' or 'flora'), not {rule!r}"
        )
    if dp == "dp-fedavg":
        if rule != "fedavg":
            raise ConfigError(f"privacy.dp = 'dp-fedavg' needs federation.aggregation = 'fedavg' (Flower's accounted DP wrapper), not {rule!r}")
        if cfg.privacy.dp_noise_multiplier <= 0:
            raise ConfigError("privacy.dp = 'dp-fedavg' needs privacy.dp_noise_multiplier > 0 for a finite epsilon")
    if dp == "dp-lora" and cfg.privacy.dp_noise_multiplier <= 0:
        raise ConfigError("privacy.dp = 'dp-lora' needs privacy.dp_noise_multiplier > 0 for a finite epsilon")
    if dp == "dp-lora" and cfg.train.method != "lora":
        raise ConfigError(
            f"privacy.dp = 'dp-lora' with train.method = {cfg.train.method!r} is refused: the proxy attacker trains on "
            "member aux samples outside DP-SGD, so the LoRA update would depend on members through the attacker and "
            "the reported epsilon would not cover it. Use train.method = 'lora' (or dp-fedavg, whose client-level "
            "clipping covers everything a client sends)."
        )
    if dp == "implicit-dp" and (rule != "ffa" or cfg.model.lora_a_init != "gaussian"):
        raise ConfigError(
            "privacy.dp = 'implicit-dp' needs A frozen at N(0, 1/r): set federation.aggregation = 'ffa' and "
            f"model.lora_a_init = 'gaussian' (got {rule!r} and {cfg.model.lora_a_init!r})"
        )


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` with a TOML value; bare words fall back to strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    if key.count(".") != 1:
        raise ConfigError(f"override key {key!r} must be section.key, e.g. federation.rounds")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _nest(dotted: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in dotted.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Defaults < TOML file < ``section.key=value`` overrides, validated once."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {p} is not valid TOML: {err}") from err
    dotted = dict(parse_override(o) for o in overrides)
    return from_dict(_merge(raw, _nest(dotted)))


def loads_config(text: str) -> ExperimentConfig:
    return from_dict(tomllib.loads(text))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")
    return "\n".join(lines)
