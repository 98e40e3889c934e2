"""One typed experiment config: defaults, TOML loading, ``--set`` overrides, validation.

Every key is declared once here, with its allowed range or values next to it (``setting``);
the allowed values of the extension keys (``data.dataset``, ``train.method``,
``federation.aggregation``, ``privacy.dp``, ``evaluation.attacks``) are the keys of their
registries in ``fedlora.registry``, and each extension validates the settings it depends on.
Unknown or ill-typed keys fail at load time with the key's dotted name and what is allowed,
before any model is built.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import tomli_w

from . import faults
from .errors import ConfigError
from .registry import ATTACKS, DATASETS, DP_MODES, OBJECTIVES, RULES, Registry

EMBEDDED_BASE = "embedded"
T = TypeVar("T")

__all__ = ["ConfigError", "EMBEDDED_BASE", "ExperimentConfig", "load_config", "loads_config", "parse_override"]


def setting(
    default: T,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: Registry[Any] | None = None,
    may_be_empty: bool = False,
) -> T:
    """A config field with its bounds (inclusive) or the registry whose keys it may take."""
    meta: dict[str, Any] = {"may_be_empty": True} if may_be_empty else {}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if choices is not None:
        meta["choices"] = choices
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    seed: int = 0
    output_dir: str = "runs"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = setting("mnist", choices=DATASETS)
    data_dir: str = ""
    image_size: int = setting(32, min=8, max=512)
    on_bad_image: Literal["error", "skip"] = "error"
    # The public split trains the base model; it depends on public_seed, never on run.seed,
    # so that every run with the same base keeps its private data unseen by that base.
    public_fraction: float = setting(0.5, min=0.0, max=0.95)
    public_seed: int = 0
    partition: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: float = setting(0.5, min=1e-6)
    members_per_client: int = setting(32, min=2)
    nonmembers_per_client: int = setting(32, min=2)


@dataclass(frozen=True)
class ModelConfig:
    base_model: str = EMBEDDED_BASE
    lora_rank: int = setting(4, min=1)
    lora_alpha: float = setting(4.0, min=1e-9)
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    # How A starts (B always starts at 0): peft's Kaiming-uniform, or N(0, 1/r) as the
    # implicit-DP argument of arXiv 2409.17538 assumes.
    lora_a_init: Literal["kaiming-uniform", "gaussian"] = "kaiming-uniform"


@dataclass(frozen=True)
class TrainConfig:
    method: str = setting("lora", choices=OBJECTIVES)
    local_steps: int = setting(20, min=1)
    batch_size: int = setting(8, min=1)
    learning_rate: float = setting(1e-3, min=1e-12)
    max_grad_norm: float = setting(1.0, min=0.0)
    # Autocast dtype of the training forward pass (fedlora/device.py); the LoRA factors, their
    # gradients and AdamW's moments stay float32, and fp16 scales the loss (torch.amp.GradScaler).
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # Recompute the UNet's activations in the backward pass instead of keeping them: less memory
    # for a 512-px SD-size UNet, about one more forward pass of time per step.
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class PrivacyConfig:
    """The MP-/SMP-LoRA defence: lambda, the stabiliser delta and each client's proxy attacker.

    The defaults are the setting scripts/smp_search.py chose on a search seed (docs/results.md): a proxy as sharp
    as the loss attacks (a logistic regression on each sample's base-calibrated loss change over 8 fixed draws,
    trained on snapshots of every row by one model, lr 1e-2, 4 steps of 16 + 16 per LoRA step), its reward capped
    at chance, its push bounded by the descent, and a trust region around the base model (base_anchor = 20);
    lambda = 20. The paper's values (lambda = 0.05, lr 1e-5, 1 step of 4, an MLP on error maps; its released
    scripts: lambda = 1) did not defend here within the budget; scripts/sweep.py PAPER_PROXY lists the keys that
    give its proxy back.
    """

    mi_lambda: float = setting(20.0, min=0.0)
    stabilizer: float = setting(1e-5, min=1e-12)
    attacker_steps: int = setting(4, min=0)  # k attacker updates per LoRA step
    attacker_batch_size: int = setting(16, min=1)  # members and as many non-members per attacker update
    attacker_learning_rate: float = setting(1e-2, min=1e-12)
    attacker_weight_decay: float = setting(1e-4, min=0.0)
    attacker_dropout: float = setting(0.0, min=0.0, max=0.99)
    # the proxy's hidden layers (the paper's: [512, 256]); [] is a logistic regression on its input
    attacker_hidden: tuple[int, ...] = ()
    # what the proxy attacker sees: the error map (the paper's), or the map minus the base model's on
    # the same (t, eps) ("calibrated", what the strongest attacks compare); averaged over k draws.
    # "calibrated-loss": one number per sample, the relative change of its denoising loss against the
    # base model's on the same draws, (l - l_base) / l_base (the loss-calibrated attack's own score)
    # "calibrated-profile": per timestep band, that relative change over attacker_feature_draws fixed
    # draws, cached for every member and D^nm_aux sample (fedlora/privacy/loss_profile.py)
    attacker_features: Literal["error", "calibrated", "calibrated-loss", "calibrated-profile"] = "calibrated-profile"
    attacker_feature_draws: int = setting(8, min=1)
    attacker_profile_bands: int = setting(1, min=1, max=32)  # calibrated-profile: timestep bands
    attacker_refresh_steps: int = setting(50, min=1)  # calibrated-profile: LoRA steps between D^nm_aux refreshes
    # calibrated-profile: each LoRA step also recomputes its own members' profiles (K passes per member), so
    # that the push sees what it did; false: the members' rows too wait for the next refresh
    profile_closed_loop: bool = True
    # calibrated-profile: the proxy trains on a snapshot of every row (members and D^nm_aux) taken by one model
    # at each refresh; false: on the members as the steps last recomputed them next to D^nm_aux rows up to
    # attacker_refresh_steps old, a staleness the proxy learned to read as membership at lr 1e-2
    profile_snapshot: bool = True
    # The privacy term rewards a member only until the proxy puts it at chance (its CE capped at log 2):
    # no reward for members that look less like members than non-members do, the over-correction a
    # fresh attacker learns to read the other way (notes/smp-lora-method.md, pitfall 5)
    cap_gain_at_chance: bool = True
    # calibrated-profile: the privacy term may turn a member's gradient into ascent at most this many times
    # as strong as its plain descent (0: unbounded, as in the paper's formula)
    max_ascent: float = setting(1.0, min=0.0)
    # weight of mean ‖ε_θ − ε_base‖² on the step's own inputs, added to L_ada: a trust region around the base
    # model (the privacy push's ascent also damages the model for everyone; 0: none, the paper's)
    base_anchor: float = setting(20.0, min=0.0)
    # Differential privacy (fedlora/privacy/dp/): dp-fedavg: Flower's central DP wrapper (update
    # clipping at dp_max_grad_norm + Gaussian noise, RDP accountant, user-level); dp-lora: per-sample
    # DP-SGD on the LoRA parameters with Opacus (sample-level, per client); implicit-dp: A frozen at
    # N(0, 1/r) and B-gradient rows scaled to dp_max_grad_norm (a heuristic, never a formal epsilon).
    dp: str = setting("none", choices=DP_MODES)
    dp_noise_multiplier: float = setting(1.0, min=0.0)
    dp_max_grad_norm: float = setting(1.0, min=1e-12)
    dp_delta: float = setting(1e-5, min=1e-15, max=0.5)
    dp_clipping: Literal["server", "client"] = "server"  # dp-fedavg: who clips the updates
    # dp-fedavg: account the round's client sampling (a uniform fixed-size subset, without replacement)
    # with amplification by sampling, replace-one neighbouring (fedlora/privacy/dp/sampled_accountant.py);
    # it pays off when few of many clients train per round, and assumes the sample stays secret
    dp_sampling_amplification: bool = False


@dataclass(frozen=True)
class FederationConfig:
    num_clients: int = setting(8, min=1)
    rounds: int = setting(5, min=1)
    fraction_train: float = setting(1.0, min=1e-9, max=1.0)
    # A fixed number of clients trained per round (0: num_clients x fraction_train, rounded), so that a
    # round's work stays constant as num_clients grows; set either this or fraction_train, not both.
    clients_per_round: int = setting(0, min=0)
    aggregation: str = setting("fedavg", choices=RULES)
    # LoRA rank per client for the heterogeneous-rank rules (svd, flora), cycled over client ids;
    # empty: every client uses model.lora_rank.
    client_ranks: tuple[int, ...] = ()
    # a client that has not answered by then counts as failed for the round
    round_timeout_s: float = setting(900.0, min=1.0)
    # The server checks every upload against what it expects of that client (fedlora/update_validation.py)
    # and leaves out the ones that fail. max_update_norm: the largest L2 norm of a client's update (its
    # upload minus what it was sent) the server accepts; 0 means no limit. min_clients_per_round: a round
    # with fewer accepted updates is skipped (the global model stays as it was).
    max_update_norm: float = setting(0.0, min=0.0)
    min_clients_per_round: int = setting(1, min=1)
    # Deployment: client discovery starts the run once this many SuperNodes are online (0: all
    # num_clients). Each round samples among the nodes online then; one that joins later, or comes
    # back, is used from the next round (server/membership.py).
    min_clients: int = setting(0, min=0)
    # Secure aggregation with Flower's SecAgg+ (fedlora/secure_aggregation.py says what the server
    # then sees). num_shares: a count (an integer >= 3) or, if <= 1, a fraction of the round's
    # sampled clients; reconstruction_threshold: a count below num_shares or a fraction of it.
    # clipping/quantization: each uploaded value, times its client's weight / the largest weight,
    # is clipped to +-clipping_range and stochastically rounded to quantization_range levels.
    secure_aggregation: bool = False
    secagg_num_shares: float = setting(1.0, min=1e-9)
    secagg_reconstruction_threshold: float = setting(0.6, min=1e-9)
    secagg_clipping_range: float = setting(2.0, min=1e-9)
    secagg_quantization_range: int = setting(2**24, min=2, max=2**31 - 1)
    # simulation only: the server also fetches each client's plain upload, outside the protocol, to
    # measure the aggregate's error and to audit each client (what no real party could do)
    secagg_oracle: bool = False


@dataclass(frozen=True)
class SimulationConfig:
    num_cpus_per_client: int = setting(1, min=1)
    num_gpus_per_client: float = setting(0.0, min=0.0)
    # Where every model and tensor of a client round and of the audit lives (fedlora/device.py):
    # "auto" = CUDA when the process sees a GPU (a Ray worker does when num_gpus_per_client > 0).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ray_address: str = ""  # "" starts a private local Ray instance
    # Per process, the encoded latents and caption embeddings of the clients it served lately, at most
    # this many MiB (least recently used dropped first, encoded again when needed; 0: no cache).
    latent_cache_mb: float = setting(256.0, min=0.0)
    ray_num_cpus: int = setting(0, min=0)  # 0: all cores of this machine
    # Fault injection: "PARTITION@ROUND" makes that client raise during that round's training
    # (after SecAgg+'s key exchange, when secure aggregation is on): dropouts on purpose.
    fail_clients: tuple[str, ...] = setting((), may_be_empty=True)
    # "PARTITION@ROUND" makes that client upload NaN in place of its update that round (after training): what
    # the server's update validation must reject and count. Both take effect in a deployment too.
    nan_clients: tuple[str, ...] = setting((), may_be_empty=True)


@dataclass(frozen=True)
class EvaluationConfig:
    num_samples: int = setting(16, min=1)
    sample_steps: int = setting(25, min=1)
    guidance_scale: float = setting(3.0, min=0.0)
    eval_members: int = setting(64, min=1)
    loss_timesteps: int = setting(8, min=1)
    quality_samples: int = setting(64, min=0)  # generated images for the caption probe (0 turns it off)
    kid_fid: bool = False  # KID/FID with the offline Inception network (about 0.1-2 s per image on CPU)
    kid_fid_samples: int = setting(64, min=2)
    # Membership-inference evaluation of the final global model and of each client's last update
    # (fedlora/evaluation/attacks/); pia, secmi, score-norm and gradient-norm are opt-in.
    attacks: tuple[str, ...] = setting(("learned-mlp-paper", "learned-mlp", "loss-threshold"), choices=ATTACKS)
    attack_clients: bool = True
    # The server keeps the last update of at most this many clients for the per-client audit: all of
    # them when num_clients <= this, else a sample drawn from run.seed (fedlora/audit_views.py).
    audit_clients: int = setting(16, min=1)
    attack_epochs: int = setting(100, min=1)
    attack_batch_size: int = setting(8, min=1)  # members and as many non-members per batch
    attack_learning_rate: float = setting(1e-5, min=1e-12)
    attack_weight_decay: float = setting(1e-4, min=0.0)
    attack_val_fraction: float = setting(0.25, min=0.05, max=0.75)  # aux held out for the honest attack's choices
    attack_feature_draws: int = setting(1, min=1)  # (t, eps) draws averaged into one loss map; the paper uses 1
    loss_attack_draws: int = setting(16, min=1)
    # Diffusion-specific attacks; each candidate list is searched on D_aux only (best aux AUC).
    # Timesteps index the scheduler's 1000-step schedule and must lie below its num_train_timesteps.
    pia_timesteps: tuple[int, ...] = (50, 100, 200, 300)
    secmi_timesteps: tuple[int, ...] = (20, 50, 100, 200)  # SecMI's candidate t_sec, one picked on aux
    secmi_k: int = setting(10, min=1)  # SecMI's DDIM step size
    score_norm_timesteps: tuple[int, ...] = (1, 10, 25, 50, 100, 200)
    score_norm_p: float = setting(4.0, min=1.0)  # SimA's norm (the released code sums |eps|^4)
    gradient_norm_timesteps: tuple[int, ...] = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)
    clid_timesteps: tuple[int, ...] = (50, 100, 200, 300, 500)  # CLiD's candidate t, one picked on aux
    clid_draws: int = setting(4, min=1)  # ε draws per sample and t (both captions share them)
    lira_shadows: int = setting(4, min=2)  # shadow LoRAs per audited view (even: each aux sample in half)
    # pia/secmi/score-norm: "paper" keeps the published sign (lower error or norm = member);
    # "from-aux" lets D_aux flip it where members score the other way (details["sign"] = -1).
    diffusion_attack_sign: Literal["from-aux", "paper"] = "from-aux"


@dataclass(frozen=True)
class PretrainConfig:
    """How ``fedlora pretrain`` builds a base model from the public split only."""

    output_dir: str = "fedlora/assets/base"
    seed: int = 0
    vae_steps: int = setting(800, min=0)
    vae_batch_size: int = setting(32, min=1)
    vae_learning_rate: float = setting(1e-3, min=1e-12)
    unet_steps: int = setting(3000, min=1)
    unet_batch_size: int = setting(64, min=1)
    unet_learning_rate: float = setting(5e-4, min=1e-12)
    caption_dropout: float = setting(0.1, min=0.0, max=1.0)


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
        return tomli_w.dumps(self.to_dict())

    def replace(self, **dotted: Any) -> ExperimentConfig:
        """A copy with ``section.key`` values replaced (validated like a file)."""
        return from_dict(_merge(self.to_dict(), _nest(dotted)))


def _allowed(choices: Registry[Any] | None, annotation: Any) -> list[Any] | None:
    if choices is not None:
        return list(choices.keys())
    return list(get_args(annotation)) if get_origin(annotation) is Literal else None


def _check_value(key: str, value: Any, annotation: Any, meta: Mapping[str, Any]) -> Any:
    allowed = _allowed(meta.get("choices"), annotation)
    if get_origin(annotation) is tuple:
        item = get_args(annotation)[0]
        if item is int:
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise ConfigError(f"{key} must be a list of integers, got {value!r}")
            if any(v < 1 for v in value):
                raise ConfigError(f"{key} = {list(value)!r}: every entry must be at least 1")
            return tuple(value)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        if allowed is not None:
            bad = [v for v in value if v not in allowed]
            if bad:
                raise ConfigError(f"{key} has {bad!r}; each entry must be one of {allowed}")
            if len(set(value)) != len(value):
                raise ConfigError(f"{key} lists an entry twice: {list(value)!r}")
            return tuple(value)
        if not value and not meta.get("may_be_empty"):
            raise ConfigError(f"{key} must not be empty")
        return tuple(value)
    if allowed is not None:
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r} is not allowed; choose one of {allowed}")
        return value
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
        if not math.isfinite(value):  # every comparison with NaN is false: bounds alone would let it through
            raise ConfigError(f"{key} = {value!r} must be a finite number")
    elif annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{key} = {value!r} is below the minimum {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{key} = {value!r} is above the maximum {meta['max']}")
    return value


# Keys of older configs (run folders keep theirs) -> today's key and value.
RENAMED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "evaluation.secmi_t": ("evaluation.secmi_timesteps", lambda t: [t]),  # one t_sec -> the candidates list
}


def _renamed(raw: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for old, (new, convert) in RENAMED.items():
        section, key = old.split(".")
        if isinstance(out.get(section), dict) and key in out[section]:
            value = out[section].pop(key)
            out[section].setdefault(new.split(".")[1], convert(value))
    return out


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate a config from nested sections; missing keys take defaults."""
    raw = _renamed(raw)
    sections = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    built: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(f"unknown config section [{name}]; allowed sections: {sorted(sections)}")
        if not isinstance(value, Mapping):
            raise ConfigError(f"[{name}] must be a table of keys, got {value!r}")
    for name, f in sections.items():
        cls: Any = f.default_factory
        hints = typing.get_type_hints(cls)
        meta = {fld.name: fld.metadata for fld in dataclasses.fields(cls)}
        given = dict(raw.get(name, {}))
        kwargs = {}
        for key, value in given.items():
            if key not in hints:
                raise ConfigError(f"unknown config key {name}.{key}; allowed keys in [{name}]: {sorted(hints)}")
            kwargs[key] = _check_value(f"{name}.{key}", value, hints[key], meta[key])
        built[name] = cls(**kwargs)
    cfg = ExperimentConfig(**built)
    _check_consistency(cfg)
    return cfg


PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _check_consistency(cfg: ExperimentConfig) -> None:
    """Rules across keys; each extension (dataset, rule, objective, DP mode) checks its own."""
    if not PLAIN_NAME.match(cfg.run.name) or ".." in cfg.run.name:
        raise ConfigError(
            f"run.name = {cfg.run.name!r} must be a plain folder name: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, no '..' and no path separators"
        )
    DATASETS.get(cfg.data.dataset).validate(cfg.data)
    if cfg.data.image_size % 8:
        raise ConfigError(f"data.image_size = {cfg.data.image_size} must be a multiple of 8")
    for key in ("members_per_client", "nonmembers_per_client"):
        if getattr(cfg.data, key) % 2:
            raise ConfigError(f"data.{key} must be even (half aux, half test), got {getattr(cfg.data, key)}")
    if cfg.evaluation.lira_shadows % 2:
        raise ConfigError(
            f"evaluation.lira_shadows = {cfg.evaluation.lira_shadows} must be even (each aux sample in half)"
        )
    for key in (
        "pia_timesteps",
        "secmi_timesteps",
        "score_norm_timesteps",
        "gradient_norm_timesteps",
        "clid_timesteps",
    ):
        if not getattr(cfg.evaluation, key):
            raise ConfigError(f"evaluation.{key} must list at least one timestep")
    if cfg.evaluation.secmi_k > min(cfg.evaluation.secmi_timesteps, default=cfg.evaluation.secmi_k):
        raise ConfigError(
            f"evaluation.secmi_k = {cfg.evaluation.secmi_k} must not exceed any of "
            f"evaluation.secmi_timesteps = {list(cfg.evaluation.secmi_timesteps)}"
        )
    faults.validate(cfg.simulation.fail_clients, cfg.federation.num_clients, cfg.federation.rounds)
    faults.validate(cfg.simulation.nan_clients, cfg.federation.num_clients, cfg.federation.rounds, "nan_clients")
    _check_clients_per_round(cfg)
    if cfg.federation.min_clients_per_round > sampled_per_round(cfg):
        raise ConfigError(
            f"federation.min_clients_per_round = {cfg.federation.min_clients_per_round} exceeds the "
            f"{sampled_per_round(cfg)} clients sampled per round ({_sampling_words(cfg)}): every round would be skipped"
        )
    if cfg.privacy.dp_sampling_amplification and not DP_MODES.get(cfg.privacy.dp).accounts_client_sampling:
        able = [k for k in DP_MODES.keys() if DP_MODES.get(k).accounts_client_sampling]
        raise ConfigError(
            f"privacy.dp_sampling_amplification = true needs privacy.dp = one of {able} (the modes that account "
            f"the server's client sampling), not {cfg.privacy.dp!r}"
        )
    if cfg.federation.min_clients > cfg.federation.num_clients:
        raise ConfigError(
            f"federation.min_clients = {cfg.federation.min_clients} exceeds federation.num_clients = "
            f"{cfg.federation.num_clients}: discovery would wait for SuperNodes that cannot exist (0 means all)"
        )
    _check_secure_aggregation(cfg)
    RULES.get(cfg.federation.aggregation).validate(cfg)
    OBJECTIVES.get(cfg.train.method).validate(cfg)
    DP_MODES.get(cfg.privacy.dp).validate(cfg)


# ---- secure aggregation's counts (Flower's conventions; fedlora/secure_aggregation.py uses them) ----

MODULUS_RANGE = 2**32  # Flower's largest mask modulus; masked values live in [0, 2**32)


def count_or_fraction(value: float) -> int | float:
    """Flower's convention: a float in (0, 1] is a fraction, anything else a count."""
    return float(value) if value <= 1 else int(value)


def min_clients_present(cfg: ExperimentConfig) -> int:
    """How many SuperNodes client discovery waits for (``federation.min_clients``, 0 meaning all)."""
    return cfg.federation.min_clients or cfg.federation.num_clients


def sampled_per_round(cfg: ExperimentConfig) -> int:
    """Clients trained per round: federation.clients_per_round, else num_clients x fraction_train (rounded)."""
    f = cfg.federation
    if f.clients_per_round:
        return f.clients_per_round
    return max(1, int(round(f.num_clients * f.fraction_train)))


def _sampling_words(cfg: ExperimentConfig) -> str:
    f = cfg.federation
    if f.clients_per_round:
        return f"federation.clients_per_round = {f.clients_per_round}"
    return f"num_clients x fraction_train = {f.num_clients} x {f.fraction_train}"


def _check_clients_per_round(cfg: ExperimentConfig) -> None:
    f = cfg.federation
    if not f.clients_per_round:
        return
    if f.fraction_train != 1.0:
        raise ConfigError(
            f"federation.clients_per_round = {f.clients_per_round} and federation.fraction_train = "
            f"{f.fraction_train} both set the clients per round; set only one of them"
        )
    if f.clients_per_round > f.num_clients:
        raise ConfigError(
            f"federation.clients_per_round = {f.clients_per_round} exceeds federation.num_clients = {f.num_clients}"
        )


def resolve(num_shares: int | float, threshold: int | float, sampled: int) -> tuple[int, int]:
    """The (shares, threshold) Flower's workflow will use for ``sampled`` clients (its own rules)."""
    if isinstance(num_shares, float):
        shares = round(num_shares * sampled)
        if shares < sampled and shares % 2 == 0:
            shares += 1
        if shares <= 2:
            shares = sampled
    else:
        shares = num_shares
    t = max(round(threshold * shares), 2) if isinstance(threshold, float) else threshold
    return shares, t


def _check_secure_aggregation(cfg: ExperimentConfig) -> None:
    """The settings SecAgg+ can run with (fedlora/secure_aggregation.py); rules and DP modes check their own side."""
    f = cfg.federation
    if not f.secure_aggregation:
        if f.secagg_oracle:
            raise ConfigError("federation.secagg_oracle = true needs federation.secure_aggregation = true")
        return
    sampled = sampled_per_round(cfg)
    if sampled < 2:
        raise ConfigError(
            "federation.secure_aggregation needs at least 2 clients per round; "
            f"{_sampling_words(cfg)} samples {sampled}"
        )
    for key in ("secagg_num_shares", "secagg_reconstruction_threshold"):
        value = getattr(f, key)
        if value > 1 and value != int(value):
            raise ConfigError(f"federation.{key} = {value}: a count must be a whole number (a fraction must be <= 1)")
    shares_given = count_or_fraction(f.secagg_num_shares)
    if isinstance(shares_given, int) and not 3 <= shares_given <= sampled:
        raise ConfigError(
            f"federation.secagg_num_shares = {shares_given}: a count must lie in 3..{sampled} (the clients "
            "sampled per round), or give a fraction <= 1 of them"
        )
    threshold_given = count_or_fraction(f.secagg_reconstruction_threshold)
    shares, threshold = resolve(shares_given, threshold_given, sampled)
    if isinstance(threshold_given, int) and not 2 <= threshold_given < shares:
        raise ConfigError(
            f"federation.secagg_reconstruction_threshold = {threshold_given}: a count must lie in "
            f"2..{shares - 1} (below the {shares} shares), or give a fraction <= 1 of the shares"
        )
    if sampled * f.secagg_quantization_range >= MODULUS_RANGE:
        raise ConfigError(
            f"federation.secagg_quantization_range = {f.secagg_quantization_range} times the {sampled} clients "
            f"per round reaches the mask modulus 2**32: the masked sum would wrap; lower it to below "
            f"{MODULUS_RANGE // sampled}"
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
