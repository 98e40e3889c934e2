"""A quick screen of SMP-LoRA levers before a full `scripts/smp_search.py` candidate: client 0 of
configs/paper-centralized.toml (or of `--config`, alone: no aggregation) trained round by round in this
process (no Flower, no Ray), and after each round the strongest attack on LoRA, the base-calibrated loss
score over 32 fixed draws, scored by AUC on D_te, plus the members' and non-members' mean losses; KID
(64 vs 64) after the last round.

It screens on the search seed (100) only; it is not the audit (one attack, not the suite).

  .venv/bin/python scripts/smp_screen.py --rounds 4 --steps 300 --set "train.method='smp-lora'" ...
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

from fedlora.config import load_config  # noqa: E402
from fedlora.data import load_dataset  # noqa: E402
from fedlora.evaluation.membership import attack_sets  # noqa: E402
from fedlora.evaluation.quality import kid_fid_metrics, sampling_kwargs  # noqa: E402
from fedlora.local_training import client_round  # noqa: E402
from fedlora.models.diffusion import mean_denoising_loss  # noqa: E402
from fedlora.models.lora import ModelView  # noqa: E402
from fedlora.runtime import get_runtime, get_splits  # noqa: E402

CONFIG = "configs/paper-centralized.toml"
DRAWS, DRAW_SEED = 32, 7


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300, help="train.local_steps per round")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    args = ap.parse_args()
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
