"""Confirm the search's chosen SMP-LoRA setting on the reported seeds, against LoRA on the same seeds.

The same runs as `scripts/smp_search.py` (its config, its attacks, its candidates' overrides; shortened to
`federation.rounds=4` unless `--full`), on seeds 0, 1, 2 instead of the search seed: each seed draws other
members, non-members and inits. Writes the `smp-confirm` section of docs/results.md: per candidate, mean ± sample
std over the seeds of every attack's |AUC − 0.5|/0.5 and ASR, the worst attack, KID, and KID ÷ LoRA's KID on the
same seed. One invocation runs its candidates one after another; two invocations (one per candidate) can share
the 2 cores.

  RAY_ADDRESS=local .venv/bin/python scripts/smp_confirm.py --only smp-l20-fast-cal --seeds 0 1 2
  .venv/bin/python scripts/smp_confirm.py --table-only
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from smp_search import ATTACKS, CANDIDATES, COMMON, CONFIG, SHORT, leakage
from sweep import ROOT, archive, fedlora_run, mean_std, read_summary, write_section

SECTION = "smp-confirm"
CHOSEN = ("lora", "smp-l20-fast-cal")  # the baseline, and the search's only candidate under the leakage target
TARGET_DEV, TARGET_ASR, TARGET_KID_RATIO = 0.25, 0.60, 1.5


def stat(values: Iterable[float], scale: float = 1.0, digits: int = 2) -> str:
    return mean_std(values, scale, digits, empty="—")


def folder(runs: Path, name: str, seed: int, full: bool) -> Path:
    return runs / f"{name}{'-full' if full else ''}-s{seed}"


def table(found: dict[str, dict[int, dict[str, Any]]], full: bool) -> list[str]:
    length = "full length (10 rounds, 6,000 steps)" if full else f"`{' '.join(SHORT)}` (2,400 steps)"
    seeds = " ".join(str(seed) for seed in sorted({seed for runs in found.values() for seed in runs}))
    flags = f"--only {' '.join(found)} --seeds {seeds}{' --full' if full else ''}"
    lines = [
        "## The chosen SMP-LoRA setting on the reported seeds (centralized)",
        "",
        "Written by `scripts/smp_confirm.py`; reproduce with `RAY_ADDRESS=local .venv/bin/python "
        f"scripts/smp_confirm.py {flags}`.",
        "",
        f"`{CONFIG}` at {length}, the search's attacks and evaluation ({len(ATTACKS)} attacks, D_te = 50 + 50 per "
        "run), on seeds the search never saw. Cells: mean ± sample std over the seeds (n in the column). "
        "Leakage = the largest |AUC − 0.5|/0.5 over the attacks in each run; KID ÷ LoRA = each seed's KID over LoRA's "
        f"on the same seed. Targets (issue 12): every attack ≤ {TARGET_DEV} and ASR ≤ {100 * TARGET_ASR:.0f} %, "
        f"KID ≤ {TARGET_KID_RATIO} × LoRA's.",
        "",
        "| setting | n | leakage (worst attack) | max ASR % | KID | KID ÷ LoRA | KID held-out | every target met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lora = found.get("lora", {})
    for name, runs in found.items():
        worst = {seed: leakage(s) for seed, s in runs.items()}  # seed -> (attack, |AUC - 0.5|/0.5, its metrics)
        devs = [w[1] for w in worst.values()]
        asrs = [max(a["asr"] for a in s["privacy"]["global"].values()) for s in runs.values()]
        kids = [s["quality"]["kid"] for s in runs.values()]
        ratios = {seed: s["quality"]["kid"] / lora[seed]["quality"]["kid"] for seed, s in runs.items() if seed in lora}
        heldout = [s["quality"]["kid_heldout"] for s in runs.values() if "kid_heldout" in s["quality"]]
        met = [
            dev <= TARGET_DEV and asr <= TARGET_ASR and ratios.get(seed, float("inf")) <= TARGET_KID_RATIO
            for seed, dev, asr in zip(runs, devs, asrs)
        ]
        lines.append(
            f"| {name} | {len(runs)} | {stat(devs)} ({', '.join(sorted({w[0] for w in worst.values()}))}) | "
            f"{stat(asrs, 100, 1)} | {stat(kids, 1, 4)} | {stat(ratios.values())} | {stat(heldout, 1, 4)} | "
            f"{sum(met)} of {len(met)} seeds |"
        )
    lines += ["", "Per attack, |AUC − 0.5|/0.5 and ASR % (mean ± std over the seeds):", ""]
    lines += ["| attack | " + " | ".join(found) + " |", "|---|" + "---|" * len(found)]
    for attack in ATTACKS:
        cells = []
        for runs in found.values():
            got = [s["privacy"]["global"][attack] for s in runs.values() if attack in s["privacy"]["global"]]
            cells.append(f"{stat([g['auc_dev'] for g in got])} / {stat([g['asr'] for g in got], 100, 1)}")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=list(CHOSEN), choices=list(CANDIDATES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--full", action="store_true", help="the config's 10 rounds instead of the search's 4")
    ap.add_argument("--runs", default="runs/smp-confirm")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--table-only", action="store_true", help="tabulate every finished run of --only and --seeds")
    args = ap.parse_args()
    runs = (ROOT / args.runs).resolve()
    length = [] if args.full else SHORT
    if not args.table_only:
        for name in args.only:
            for seed in args.seeds:
                out = folder(runs, name, seed, args.full)
                fedlora_run(CONFIG, COMMON + length + CANDIDATES[name] + [f"run.seed={seed}"], out)
    folders = {name: {s: folder(runs, name, s, args.full) for s in args.seeds} for name in args.only}
    finished = {name: {s: f for s, f in per.items() if (f / "summary.json").exists()} for name, per in folders.items()}
    archive([f for per in finished.values() for f in per.values()], SECTION)
    found = {name: {s: read_summary(f) for s, f in per.items()} for name, per in finished.items() if per}
    if found:
        write_section(SECTION, table(found, args.full), ROOT / args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
