"""A quick screen of SMP-LoRA levers before a full `scripts/smp_search.py` candidate: client 0 of
configs/paper-centralized.toml (or of `--config`, alone: no aggregation) trained round by round in this
process (no Flower, no Ray), and after each round the strongest attack on LoRA, the base-calibrated loss
score over 32 fixed draws, scored by AUC on D_te, plus the members' and non-members' mean losses; KID
(64 vs 64) after the last round.

It screens on the search seed (100) only; it is not the audit (one attack, not the suite).

  .venv/bin/python scripts/smp_screen.py --rounds 4 --steps 300 --set "train.method='smp-lora'" ...

`--proxy-check` instead trains round 1 (from the base model) of every client of `--config` and prints each
proxy's accuracy on its own aux batches (what it trains on) and on its own D_te after the round, and the mean
over clients: a proxy below chance on D_te has learned something other than membership.

  .venv/bin/python scripts/smp_screen.py --config configs/default.toml --proxy-check --set "train.method='smp-lora'"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from fedlora.config import ExperimentConfig, load_config  # noqa: E402
from fedlora.data import load_dataset  # noqa: E402
from fedlora.evaluation.membership import attack_sets  # noqa: E402
from fedlora.evaluation.quality import kid_fid_metrics, sampling_kwargs  # noqa: E402
from fedlora.local_training import client_round  # noqa: E402
from fedlora.models.diffusion import mean_denoising_loss  # noqa: E402
from fedlora.models.lora import ModelView  # noqa: E402
from fedlora.runtime import get_runtime, get_splits  # noqa: E402

CONFIG = "configs/paper-centralized.toml"
DRAWS, DRAW_SEED = 32, 7


def proxy_check(cfg: ExperimentConfig) -> int:
    runtime, accuracies = get_runtime(cfg), []
    for client in range(cfg.federation.num_clients):
        metrics = client_round(cfg, client, dict(runtime.initial), 1).metrics
        accuracies.append(metrics["attacker_test_acc"])
        print(
            f"client {client}: proxy accuracy on aux {metrics['attacker_acc']:.3f}, on its D_te "
            f"{metrics['attacker_test_acc']:.3f}",
            flush=True,
        )
    print(f"mean accuracy on D_te over {len(accuracies)} clients: {np.mean(accuracies):.3f}", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300, help="train.local_steps per round")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--proxy-check", action="store_true", help="round 1 of every client: its proxy's accuracies")
    args = ap.parse_args()
    if args.proxy_check:
        return proxy_check(load_config(ROOT / args.config, [f"run.seed={args.seed}", *args.overrides]))
    overrides = [f"run.seed={args.seed}", f"train.local_steps={args.steps}", "evaluation.kid_fid=true", *args.overrides]
    cfg = load_config(ROOT / args.config, overrides)
    runtime, dataset, splits = get_runtime(cfg), load_dataset(cfg.data), get_splits(cfg)
    sets = attack_sets(runtime, dataset, splits, [0])

    def audit(view: ModelView) -> dict[str, float]:
        runtime.show(view)
        own, calibrated = {}, {}
        for name, s in (("members", sets.member_test), ("nonmembers", sets.nonmember_test)):
            own[name] = mean_denoising_loss(runtime.unet, runtime.scheduler, s.latents, s.cond, DRAWS, DRAW_SEED)
            with runtime.adapters_disabled():
                base = mean_denoising_loss(runtime.unet, runtime.scheduler, s.latents, s.cond, DRAWS, DRAW_SEED)
            calibrated[name] = (own[name] - base).numpy()
        labels = np.r_[np.ones(len(calibrated["members"])), np.zeros(len(calibrated["nonmembers"]))]
        score = -np.concatenate([calibrated["members"], calibrated["nonmembers"]])
        return {
            "loss_calibrated_auc": float(roc_auc_score(labels, score)),
            "member_loss": float(own["members"].mean()),
            "nonmember_loss": float(own["nonmembers"].mean()),
        }

    adapter, state = dict(runtime.initial), None
    for r in range(1, args.rounds + 1):
        started = time.perf_counter()
        result = client_round(cfg, 0, adapter, r, objective_state=state)
        adapter, state = result.state, result.objective_state
        got = audit(ModelView(lora=dict(adapter)))
        shown = {k: round(v, 4) for k, v in {**result.metrics, **got}.items()}
        print(f"round {r} ({time.perf_counter() - started:.0f} s): {shown}", flush=True)
    quality = kid_fid_metrics(cfg, runtime, splits, ModelView(lora=dict(adapter)), dataset, sampling_kwargs(cfg))
    print(f"KID {quality['kid']:.4f}, held-out KID {quality['kid_heldout']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
