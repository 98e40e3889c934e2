"""Training time of one client round per method on the same config, in one process (ratios, not absolutes).

bench_step.py times single steps of the paper's proxy; this times whole client rounds as a run trains them
(`fedlora.local_training.client_round`: the proxy's profiles, its updates, the base anchor, everything), so
the default SMP-LoRA proxy's cost shows. The methods alternate, `--repeats` times, so machine noise hits
all alike; each round's `train_s` (the step loop, not the set-up) is divided by its steps.
Usage: python scripts/bench_round.py [--config configs/default.toml] [--method NAME=OVERRIDES ...]
  [--out docs/measurements/round_time.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from sweep import PAPER_PROXY

from fedlora.config import load_config
from fedlora.local_training import client_round
from fedlora.runtime import get_runtime

METHODS = {
    "lora": ["train.method='lora'"],
    "smp-lora": ["train.method='smp-lora'"],  # its defaults: the calibrated-profile proxy
    "smp-lora-paper-proxy": ["train.method='smp-lora'", *PAPER_PROXY],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applied to every method")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/measurements/round_time.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfgs = {name: load_config(args.config, [*args.overrides, *extra]) for name, extra in METHODS.items()}
    start = get_runtime(cfgs["lora"]).get_lora()
    per_step: dict[str, list[float]] = {name: [] for name in cfgs}
    for repeat in range(args.repeats):
        for name, cfg in cfgs.items():
            result = client_round(cfg, 0, start, server_round=1)
            per_step[name].append(result.metrics["train_s"] / result.stats.steps)
            print(f"[bench_round] {repeat + 1}/{args.repeats} {name}: {per_step[name][-1]:.3f} s/step", flush=True)
    med = {name: statistics.median(v) for name, v in per_step.items()}
    out = {
        "command": "python " + " ".join(sys.argv),
        "config": args.config,
        "overrides": args.overrides,
        "methods": METHODS,
        "local_steps": cfgs["lora"].train.local_steps,
        "batch_size": cfgs["lora"].train.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "step_s": per_step,
        "median_step_s": med,
        "ratio_over_lora": {name: m / med["lora"] for name, m in med.items()},
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
