"""Does a lower LoRA rank buy measurable privacy? The claim of arXiv 2409.17538, measured.

On the centralized paper config (1 client, 100 + 100 members/non-members, 10 rounds × 600 steps):
- plain LoRA at ranks r ∈ {1, 4, 16, 64} (lora_alpha = r, so the same step schedule and scale);
- full fine-tuning of the same layers (their weights trained directly, the same steps, seeds and
  per-round AdamW restart as a one-client `fedlora run`);
- DP-SGD on the LoRA factors (`dp-lora`) at the noise multiplier the paper's argument assigns to
  rank r, σ ≈ batch / √r (the `implicit-dp` heuristic),
each audited with the same attack suite and KID. Rows are real runs under runs/rank/ (reused
when finished, archived to docs/measurements/rank/); the table and figure go to docs/results.md
and docs/rank_vs_leakage.png.

  RAY_ADDRESS=local .venv/bin/python scripts/rank_study.py             # every row, seed 0
  RAY_ADDRESS=local .venv/bin/python scripts/rank_study.py --rows lora --ranks 1 4
  .venv/bin/python scripts/rank_study.py --table-only
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from sweep import ROOT, archive, fedlora_run, read_summary, repo_relative, write_section

CONFIG = "configs/paper-centralized.toml"
RANKS = (1, 4, 16, 64)
ROWS = ("lora", "dp", "full")
# the audit: every score attack with and without calibration, the honest learned MLP, CLiD (gradient-norm
# needs LoRA factors that the full fine-tune does not train, LiRA its shadows: both left out here)
ATTACKS = [
    "learned-mlp",
    "loss-threshold",
    "loss-calibrated",
    "pia",
    "pia-calibrated",
    "secmi",
    "secmi-calibrated",
    "score-norm",
    "score-norm-calibrated",
    "clid",
    "clid-calibrated",
]
COMMON = [f"evaluation.attacks={ATTACKS}", "evaluation.loss_attack_draws=32", "evaluation.attack_feature_draws=4"]
SECTION = "rank-study"
FIGURE = "docs/rank_vs_leakage.png"


def noise_for_rank(rank: int, batch: int) -> float:
    """The implicit-DP heuristic's equivalent noise multiplier σ ≈ b / √r."""
    return batch / math.sqrt(rank)


def lora_overrides(rank: int) -> list[str]:
    return [f"model.lora_rank={rank}", f"model.lora_alpha={float(rank)}", "train.method='lora'"]


def run_full_finetune(out: Path, seed: int, config: str = CONFIG, extra: list[str] | None = None) -> Path:
    """The same schedule as a one-client `fedlora run`, on the targeted layers' own weights."""
    import torch

    from fedlora.config import load_config
    from fedlora.data import load_dataset
    from fedlora.evaluation.tracking import LossTracker
    from fedlora.finalize import RunResult, finalize_run
    from fedlora.local_training import round_seed
    from fedlora.models.lora import ModelView, lora_layers, set_trainable
    from fedlora.outputs import SPLITS_FILE, RunOutputs
    from fedlora.privacy.objectives import LoraObjective
    from fedlora.reports import Communication, Timing
    from fedlora.runtime import ModelRuntime, get_splits
    from fedlora.training import train_lora

    if (out / "summary.json").exists():
        print(f"[rank] reuse {repo_relative(out)}", flush=True)
        return out
    torch.set_num_threads(1)
    started = time.perf_counter()
    overrides = [
        *COMMON,
        *(extra or []),
        f"run.seed={seed}",
        f"run.name='{out.name}'",
        f"run.output_dir='{repo_relative(out.parent)}'",
    ]
    cfg = load_config(ROOT / config, overrides)
    outputs = RunOutputs.create(cfg)
    splits = get_splits(cfg)
    splits.save(outputs.path(SPLITS_FILE))
    runtime = ModelRuntime(cfg)
    members = runtime.encode(load_dataset(cfg.data), splits.clients[0].members)
    tracker = LossTracker(cfg, runtime, splits)
    layers = dict(lora_layers(runtime.unet))

    def view() -> ModelView:
        deltas = {}
        for prefix, layer in layers.items():
            w = layer.base_layer.weight.detach().double()
            deltas[prefix] = (w - runtime.base.original[prefix].double()).reshape(w.shape[0], -1).numpy()
        return ModelView(deltas=deltas)

    outputs.append_metrics({"round": 0, **tracker(ModelView())})
    timing = Timing()
    for server_round in range(1, cfg.federation.rounds + 1):
        t0 = time.perf_counter()
        set_trainable(runtime.unet, train_a=False, train_b=False)
        for layer in layers.values():
            layer.base_layer.weight.requires_grad_(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(round_seed(cfg.run.seed, 0, server_round, 5))
            stats = train_lora(runtime, members, cfg.train, LoraObjective(), round_seed(cfg.run.seed, 0, server_round))
        for layer in layers.values():
            layer.base_layer.weight.requires_grad_(False)
        set_trainable(runtime.unet, train_a=True)
        round_s = time.perf_counter() - t0
        timing.train_s += round_s
        current = view()
        client = {"num-examples": stats.num_examples, "train_loss": stats.loss_mean, "steps": stats.steps}
        outputs.append_metrics(
            {"round": server_round, **tracker(current), "clients": {"0": client}, "round_s": round_s}
        )
        print(f"[rank] full fine-tune round {server_round}: train loss {stats.loss_mean:.4f}", flush=True)
    final = view()
    result = RunResult(timing, Communication(), dp={"mechanism": "none"})
    finalize_run(outputs, cfg, runtime, splits, final, result, started)
    return outputs.root


def plan(rows: list[str], ranks: list[int], seed: int, runs: Path) -> list[tuple[str, Path, list[str] | None]]:
    """(row name, run folder, fedlora-run overrides or None for the in-process full fine-tune)."""
    batch = 8  # configs/paper-centralized.toml's train.batch_size
    out: list[tuple[str, Path, list[str] | None]] = []
    if "lora" in rows:
        out += [(f"lora-r{r}", runs / f"lora-r{r}-s{seed}", lora_overrides(r)) for r in ranks]
    if "dp" in rows:
        for r in ranks:
            sigma = noise_for_rank(r, batch)
            dp = ["privacy.dp='dp-lora'", f"privacy.dp_noise_multiplier={sigma}", "privacy.dp_max_grad_norm=1.0"]
            out.append((f"dp-lora-r{r}", runs / f"dp-lora-r{r}-s{seed}", lora_overrides(r) + dp))
    if "full" in rows:
        out.append(("full", runs / f"full-s{seed}", None))
    return out


def best(summary: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    attacks = summary["privacy"]["global"]
    name = max(attacks, key=lambda a: abs(attacks[a]["auc"] - 0.5))
    return name, attacks[name]


def trainable_parameters(summary: dict[str, Any], row: str) -> str:
    return "dense" if row == "full" else f"rank {summary['adapter_rank']}"


def table(entries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = [
        "## Does a lower rank buy privacy? (arXiv 2409.17538, measured)",
        "",
        "Written by `scripts/rank_study.py`; reproduce with "
        "`RAY_ADDRESS=local .venv/bin/python scripts/rank_study.py`.",
        "",
        f"`{CONFIG}` (1 client, 100 members and 100 non-members, 10 rounds × 600 steps of batch 8, lr 1e-3, LoRA "
        "on attention, feed-forward and ResNet convs) with `lora_alpha = r`, one seed. Full fine-tuning trains "
        "the same layers' weights with the same schedule and seeds. `dp-lora` rows run DP-SGD on the LoRA factors "
        "at σ = 8 / √r, the noise the implicit-DP argument equates with rank r (C = 1, Poisson rate 0.08). Attacks "
        f"on the final model, D_te = 50 + 50: {', '.join(ATTACKS)} (32 loss draws; learned MLP with 4 feature "
        "draws); 'best' = the attack farthest from AUC 0.5, its 95 % bootstrap interval; KID on 64 vs 64 images.",
        "",
        "| run | adapter | DP σ | ε (δ = 1e-5) | best attack | its AUC [95 % CI] | its ASR % | loss-calibrated AUC "
        "| members' loss Δ | KID ↓ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, s in entries:
        name, m = best(s)
        dp = s["privacy"].get("dp", {})
        sigma = dp.get("noise_multiplier")
        eps = dp.get("epsilon")
        cal = s["privacy"]["global"].get("loss-calibrated", {})
        q = s["quality"]
        delta = s.get("_member_loss_change")
        lines.append(
            f"| {row} | {trainable_parameters(s, row)} | {'—' if sigma is None else f'{sigma:.2f}'} | "
            f"{'—' if eps is None else f'{eps:.1f}'} | {name} | {m['auc']:.3f} [{m['auc_ci_low']:.3f}, "
            f"{m['auc_ci_high']:.3f}] | {100 * m['asr']:.1f} | {cal.get('auc', float('nan')):.3f} | "
            f"{'—' if delta is None else f'{delta:+.4f}'} | {q.get('kid', float('nan')):.4f} |"
        )
    return lines + ["", f"![rank vs leakage]({Path(FIGURE).name})", ""]


def figure(entries: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for prefix, label, style in (("lora-r", "LoRA", "o-"), ("dp-lora-r", "DP-SGD on LoRA, σ = 8/√r", "s--")):
        pts = sorted((int(r[len(prefix) :]), s) for r, s in entries if r.startswith(prefix))
        if not pts:
            continue
        ranks = [r for r, _ in pts]
        aucs = [best(s)[1] for _, s in pts]
        err = [[m["auc"] - m["auc_ci_low"] for m in aucs], [m["auc_ci_high"] - m["auc"] for m in aucs]]
        left.errorbar(ranks, [m["auc"] for m in aucs], yerr=err, fmt=style, capsize=3, label=label)
        right.plot(ranks, [s["quality"].get("kid", np.nan) for _, s in pts], style, label=label)
    for row, s in entries:
        if row == "full":
            m = best(s)[1]
            left.axhspan(m["auc_ci_low"], m["auc_ci_high"], color="grey", alpha=0.2, label="full fine-tuning (95 % CI)")
            left.axhline(m["auc"], color="grey", lw=1)
            right.axhline(s["quality"].get("kid", np.nan), color="grey", lw=1, label="full fine-tuning")
    left.axhline(0.5, color="black", lw=0.8, ls=":")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("LoRA rank r")
        ax.legend(fontsize=8)
    left.set_ylabel("best attack's AUC on D_te (50 + 50)")
    left.set_title("leakage of the final model")
    right.set_ylabel("KID (64 vs 64, lower = better)")
    right.set_title("quality")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def member_loss_change(run: Path) -> float | None:
    from sweep import read_metrics

    rows = read_metrics(run)
    return rows[-1]["member_loss"] - rows[0]["member_loss"] if len(rows) > 1 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--ranks", nargs="+", type=int, default=list(RANKS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/rank")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--config", default=CONFIG, help="another base config (for a quick trial)")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra section.key=value for every row")
    args = ap.parse_args()
    runs = (ROOT / args.runs).resolve()
    cells = plan(args.rows, args.ranks, args.seed, runs)
    if not args.table_only:
        for _, out, overrides in cells:
            if overrides is None:
                run_full_finetune(out, args.seed, args.config, args.extra)
            else:
                fedlora_run(args.config, COMMON + overrides + args.extra + [f"run.seed={args.seed}"], out)
    archive([out for _, out, _ in cells], "rank")
    entries = []
    for row, out, _ in cells:
        if (out / "summary.json").exists():
            s = read_summary(out)
            s["_member_loss_change"] = member_loss_change(out)
            entries.append((row, s))
    if entries:
        figure(entries, ROOT / FIGURE)
    write_section(SECTION, table(entries), ROOT / args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
