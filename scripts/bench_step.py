"""Step time of SMP-LoRA against plain LoRA on the same batch, in one process (ratios, not absolutes).

Three step kinds on the embedded base, interleaved in blocks so machine noise hits all alike:
  lora          one UNet forward/backward (L_ada)
  smp-lora      fedlora's SMP-LoRA step: L_ada and the attacker's input from ONE forward/backward,
                then k attacker updates on 2*attacker_batch_size no-grad loss maps
  smp-2pass     the released code's shape: a second forward/backward with its own (t, eps) for the
                MI term, then the same attacker updates
and, from timers around each phase of the smp-lora step (a profile: where its extra time goes), the median
seconds of: the UNet forward/backward and optimizer step it shares with lora, the proxy attacker's forward on the
member maps, building the attacker's aux batch (no-grad UNet loss maps of 2 x attacker_batch_size aux/test
samples), and the attacker's update.
Usage: python scripts/bench_step.py [--out docs/measurements/step_time.json] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import cast

import torch

from fedlora.config import load_config
from fedlora.data import load_dataset
from fedlora.evaluation.membership import attack_sets
from fedlora.local_training import membership_batches
from fedlora.models.diffusion import squared_error_map
from fedlora.privacy.attacker import member_cross_entropy
from fedlora.privacy.objectives import ProxyAttackerObjective, build_objective, smp_lora_loss
from fedlora.runtime import get_runtime, get_splits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/paper-centralized.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20, help="steps per block")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/measurements/step_time.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["train.method='smp-lora'", *args.overrides])
    runtime = get_runtime(cfg)
    dataset = load_dataset(cfg.data)
    split = get_splits(cfg).clients[0]
    members = runtime.encode(dataset, split.members)
    gen = torch.Generator().manual_seed(0)
    batches = membership_batches(runtime, attack_sets(runtime, dataset, get_splits(cfg), [0]), gen)
    objective = cast(ProxyAttackerObjective, build_objective(cfg, members.latents[0].numel(), batches, seed=0))
    unet, sched = runtime.unet, runtime.scheduler
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    bs = cfg.train.batch_size
    z, c = members.latents[:bs], members.cond[:bs]
    T = sched.config.num_train_timesteps

    def draw():
        return torch.randn(z.shape, generator=gen), torch.randint(0, T, (bs,), generator=gen)

    def lora_step():
        err = squared_error_map(unet, sched, z, c, *draw())
        loss = err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def smp_step():
        err = squared_error_map(unet, sched, z, c, *draw())
        loss, _ = objective.loss(err)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        objective.after_step()

    def smp_two_pass_step():
        l_ada = squared_error_map(unet, sched, z, c, *draw()).mean()
        gain = -member_cross_entropy(objective.attacker.model, squared_error_map(unet, sched, z, c, *draw()))
        loss = smp_lora_loss(l_ada, gain, cfg.privacy.mi_lambda, cfg.privacy.stabilizer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        objective.after_step()

    phases: dict[str, list[float]] = {
        "unet_forward_backward_step": [],
        "attacker_forward": [],
        "aux_maps": [],
        "attacker_update": [],
    }

    def profiled_smp_step():
        t0 = time.perf_counter()
        err = squared_error_map(unet, sched, z, c, *draw())
        t1 = time.perf_counter()
        loss, _ = objective.loss(err)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t3 = time.perf_counter()
        aux = 0.0
        update = 0.0
        for _ in range(cfg.privacy.attacker_steps):
            a = time.perf_counter()
            maps, labels = objective.batches.aux(cfg.privacy.attacker_batch_size)
            b = time.perf_counter()
            objective.attacker.step(maps, labels)
            aux, update = aux + b - a, update + time.perf_counter() - b
        phases["unet_forward_backward_step"].append((t1 - t0) + (t3 - t2))
        phases["attacker_forward"].append(t2 - t1)
        phases["aux_maps"].append(aux)
        phases["attacker_update"].append(update)

    kinds = {"lora": lora_step, "smp-lora": smp_step, "smp-2pass": smp_two_pass_step}
    unet.train()
    for fn in kinds.values():  # warm-up
        for _ in range(3):
            fn()
    per_block: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.blocks):
        for name, fn in kinds.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            per_block[name].append((time.perf_counter() - t0) / args.steps)
    for _ in range(args.blocks * args.steps // 2):
        profiled_smp_step()
    med = {k: statistics.median(v) for k, v in per_block.items()}
    profile = {k: statistics.median(v) for k, v in phases.items()}
    out = {
        "command": "python " + " ".join(sys.argv),
        "config": args.config,
        "overrides": args.overrides,
        "batch_size": bs,
        "attacker_steps": cfg.privacy.attacker_steps,
        "attacker_batch_size": cfg.privacy.attacker_batch_size,
        "lora_rank": cfg.model.lora_rank,
        "threads": args.threads,
        "blocks": args.blocks,
        "steps_per_block": args.steps,
        "median_step_s": med,
        "ratio_smp_over_lora": med["smp-lora"] / med["lora"],
        "ratio_smp_2pass_over_lora": med["smp-2pass"] / med["lora"],
        "smp_lora_phases_median_s": profile,
        "smp_lora_phases_share": {k: v / sum(profile.values()) for k, v in profile.items()},
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
