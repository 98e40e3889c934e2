"""The extension points: each registry is the config's list of allowed values, and a rule, an
attack, an objective and a DP mode written in this file alone run a whole federation."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch
from local_grid import LocalGrid

from clients.app import app as client_app
from fedlora import aggregation as agg
from fedlora.config import ConfigError, ExperimentConfig, load_config
from fedlora.evaluation.attacks import AttackContext, AttackResult
from fedlora.evaluation.attacks.base import attack_result, labelled
from fedlora.models.lora import ModelView
from fedlora.outputs import METRICS_FILE, SUMMARY_FILE
from fedlora.privacy.dp import DpMode
from fedlora.privacy.objectives import Objective
from fedlora.registry import ATTACKS, DATASETS, DP_MODES, OBJECTIVES, RULES, Registry
from fedlora.rounds import RoundLog
from fedlora.rules import Arrays, ClientSetup, Rule, State
from server.app import run_federated

CONFIG_KEYS = {
    RULES: "federation.aggregation",
    ATTACKS: "evaluation.attacks",
    OBJECTIVES: "train.method",
    DP_MODES: "privacy.dp",
    DATASETS: "data.dataset",
}


def field_choices(dotted: str) -> Registry[Any]:
    section, key = dotted.split(".")
    cls = next(f.default_factory for f in dataclasses.fields(ExperimentConfig) if f.name == section)  # type: ignore[misc]
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == key)


@pytest.mark.parametrize("registry", list(CONFIG_KEYS), ids=lambda r: r.config_key)
def test_each_registry_is_the_configs_allowed_values(registry):
    dotted = CONFIG_KEYS[registry]
    assert registry.config_key == dotted and field_choices(dotted) is registry
    value = "['no-such-thing']" if dotted == "evaluation.attacks" else "'no-such-thing'"
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{dotted}={value}"])
    assert str(list(registry.keys())) in str(err.value)  # the message lists exactly the registered keys
    assert len(registry.keys()) >= 3 and all(e.description for e in registry.entries())


def test_registries_refuse_a_second_entry_under_a_taken_key():
    with pytest.raises(ValueError, match="already registered"):
        RULES.add("fedavg", object(), description="another fedavg")


# ---------------------------------------------------------------- toy extensions, this file only


class ServerStepRule(Rule):
    """FedAvg with a server learning rate of ½: global ← global + ½ (mean of the uploads − global)."""

    global_is_carried = True
    folds: list[tuple[Arrays, Arrays, Arrays]] = []  # (global before, mean of uploads, global after)

    def client_setup(self, client_id: int, payload: State, kept: State, init: State) -> ClientSetup:
        return ClientSetup(dict(payload))

    def payload(self, client_id: int) -> Arrays:
        return dict(self.global_lora)

    def fold(self, ids, uploads, weights, eval_only) -> None:
        mean = agg.fedavg([uploads[i] for i in ids], weights)
        before = dict(self.global_lora)
        self.global_lora = {k: (g + 0.5 * (mean[k] - g)).astype(np.float32) for k, g in before.items()}
        self.views.update({i: ModelView(lora=dict(uploads[i])) for i in ids})
        self.folds.append((before, mean, dict(self.global_lora)))

    def global_view(self) -> ModelView:
        return ModelView(lora=dict(self.global_lora))


class AbsErrorObjective(Objective):
    """L1 denoising: the mean of |ε − ε_θ| (the square root of the error map)."""

    def loss(self, err: torch.Tensor, batch: Any = None) -> tuple[torch.Tensor, dict[str, float]]:
        loss = (err + 1e-12).sqrt().mean()
        return loss, {"toy_l1": float(loss.detach())}


class GradientNoise(DpMode):
    """Global-norm clipping plus N(0, (σC)²) on the batch gradient: no per-sample bound, so no ε."""

    def gradient_hook(self):
        gen = torch.Generator().manual_seed(self.cfg.run.seed)
        c, sigma = self.cfg.privacy.dp_max_grad_norm, self.cfg.privacy.dp_noise_multiplier

        def hook(unet, params):
            torch.nn.utils.clip_grad_norm_(params, c)
            for p in params:
                p.grad.add_(torch.randn(p.grad.shape, generator=gen) * sigma * c)

        return hook

    def summary(self, log: RoundLog) -> dict[str, Any]:
        return {"mechanism": "toy-grad-noise", "rounds": len(log.trained()), "formal": False}


def latent_norm_attack(ctx: AttackContext) -> AttackResult:
    """−‖x₀‖: blind to the model, so it cannot know who was trained on."""
    aux, aux_member = labelled(ctx.sets.member_aux, ctx.sets.nonmember_aux)
    test, test_member = labelled(ctx.sets.member_test, ctx.sets.nonmember_test)
    from fedlora.evaluation.leakage import best_threshold

    def score(s):
        return -s.latents.flatten(1).norm(dim=1).double().numpy()

    return attack_result(score(test), test_member, best_threshold(score(aux), aux_member))


TOYS = [
    (RULES, "toy-server-step", ServerStepRule),
    (OBJECTIVES, "toy-l1", AbsErrorObjective),
    (DP_MODES, "toy-grad-noise", GradientNoise),
    (ATTACKS, "toy-latent-norm", latent_norm_attack),
]


@pytest.fixture
def toys():
    for registry, key, value in TOYS:
        registry.add(key, value, description=f"a toy {registry.kind} defined in tests/test_extensions.py")
    yield
    for registry, key, _ in TOYS:
        registry.remove(key)


def test_toy_rule_objective_dp_mode_and_attack_run_a_federation(toys, tmp_path):
    cfg = load_config(
        "configs/smoke.toml",
        [
            f"run.output_dir='{tmp_path}'",
            "federation.rounds=2",
            "federation.aggregation='toy-server-step'",
            "train.method='toy-l1'",
            "privacy.dp='toy-grad-noise'",
            "privacy.dp_noise_multiplier=0.01",
            "evaluation.attacks=['loss-threshold', 'toy-latent-norm']",
            "evaluation.quality_samples=0",
        ],
    )
    ServerStepRule.folds.clear()
    run_dir, final = run_federated(LocalGrid(client_app, cfg.federation.num_clients), cfg)

    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    rows = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert summary["aggregation"] == "toy-server-step" and summary["method"] == "toy-l1"
    assert summary["privacy"]["dp"] == {"mechanism": "toy-grad-noise", "rounds": 2, "formal": False}
    assert set(summary["privacy"]["global"]) == {"loss-threshold", "toy-latent-norm"}
    assert set(summary["privacy"]["clients"]["0"]) == {"loss-threshold", "toy-latent-norm"}
    assert all(c["toy_l1"] > 0 for r in rows[1:] for c in r["clients"].values())  # the objective's own metric
    # the server ran the rule's own math, round after round, from the run seed's adapter
    from fedlora.runtime import get_runtime

    folds = ServerStepRule.folds
    assert len(folds) == 2 and all(np.array_equal(folds[0][0][k], v) for k, v in get_runtime(cfg).initial.items())
    for before, mean, after in folds:
        for k in before:
            np.testing.assert_allclose(after[k], before[k] + 0.5 * (mean[k] - before[k]), rtol=1e-6, atol=1e-7)
    assert all(np.array_equal(final.lora[k], v) for k, v in folds[-1][2].items())
    assert any(np.abs(v).max() > 0 for k, v in final.lora.items() if "lora_B" in k)  # training moved B


def test_toy_rule_protocol_is_its_own_math(toys):
    ServerStepRule.folds.clear()
    cfg = load_config(None, ["federation.aggregation='toy-server-step'", "federation.num_clients=2"])
    rng = np.random.default_rng(0)
    start = {
        "m.lora_A.weight": rng.normal(size=(2, 3)).astype(np.float32),
        "m.lora_B.weight": np.zeros((3, 2), np.float32),
    }
    rule = RULES.get("toy-server-step")(cfg).start(start)
    ups = {c: {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in start.items()} for c in (0, 1)}
    rule.aggregate(ups, {0: 1.0, 1: 3.0})
    mean = agg.fedavg([ups[0], ups[1]], [1.0, 3.0])
    for k in start:
        np.testing.assert_allclose(rule.global_view().lora[k], start[k] + 0.5 * (mean[k] - start[k]), rtol=1e-6)


def test_a_toy_rule_is_refused_by_checks_that_read_traits(toys):
    with pytest.raises(ConfigError, match="client_ranks"):
        load_config(None, ["federation.aggregation='toy-server-step'", "federation.client_ranks=[2, 4]"])
    # dp-fedavg accepts any rule whose global adapter is what Flower carries, and names them
    load_config(None, ["federation.aggregation='toy-server-step'", "privacy.dp='dp-fedavg'"])
    with pytest.raises(ConfigError, match=r"toy-server-step"):
        load_config(None, ["federation.aggregation='ffa'", "privacy.dp='dp-fedavg'"])
