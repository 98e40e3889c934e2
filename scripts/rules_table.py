"""Aggregation rules x methods (and DP variants) on the default federated config -> docs/results.md.

Each cell is a real `fedlora run` of configs/default.toml with the overrides printed in the
table's header; finished runs (summary.json exists) are reused, so the table resumes. The
section is written between markers in docs/results.md, leaving the rest of the file alone.
(The v0.1 table, on what is now configs/mild.toml, is archived in docs/measurements/rules/.)

  python scripts/rules_table.py                           # the whole benchmark
  python scripts/rules_table.py --partitions iid --rules fedavg ffa --methods lora
  python scripts/rules_table.py --table-only
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sweep import PAPER_PROXY, ROOT, archive, best_attack, fedlora_run, kib, read_metrics, read_summary, write_section

from fedlora.registry import RULES as REGISTERED_RULES

CONFIG = "configs/default.toml"
RULES = REGISTERED_RULES.keys()
METHODS = ("lora", "smp-lora")
PARTITIONS = {"iid": ["data.partition='iid'"], "dirichlet": ["data.partition='dirichlet'", "data.dirichlet_alpha=0.5"]}
# every run: the default config's attacks, KID/FID on 64 images
COMMON = ["evaluation.kid_fid=true", "evaluation.kid_fid_samples=64"]
# SMP-LoRA as in the paper configs (lambda = 1, attacker lr 1e-4; docs/results.md above says why)
SMP = ["privacy.mi_lambda=1.0", "privacy.attacker_learning_rate=1e-4", *PAPER_PROXY]
# extra rows, each on iid with plain LoRA
VARIANTS = {
    "svd-ranks-2-4-8": ["federation.aggregation='svd'", "federation.client_ranks=[2, 4, 8]"],
    "flora-ranks-2-4-8": ["federation.aggregation='flora'", "federation.client_ranks=[2, 4, 8]"],
    "dp-fedavg": ["privacy.dp='dp-fedavg'", "privacy.dp_noise_multiplier=1.0", "privacy.dp_max_grad_norm=0.1"],
    "dp-lora": ["privacy.dp='dp-lora'", "privacy.dp_noise_multiplier=1.0", "privacy.dp_max_grad_norm=1.0"],
    "implicit-dp": [
        "privacy.dp='implicit-dp'",
        "federation.aggregation='ffa'",
        "model.lora_a_init='gaussian'",
        "privacy.dp_max_grad_norm=1.0",
    ],
}
CALIBRATED = "loss-calibrated"  # the column every row has: the base-calibrated loss attack
SECTION = "rules-table"
ARCHIVE = "rules-default"


def cells(
    partitions: list[str],
    rules: list[str],
    methods: list[str],
    variants: list[str],
    non_iid_methods: list[str] | None = None,
    smp_rules: list[str] | None = None,
    non_iid_rules: list[str] | None = None,
) -> list[tuple[str, list[str]]]:
    def cell(part: str, rule: str, method: str) -> tuple[str, list[str]]:
        extra = PARTITIONS[part] + [f"federation.aggregation='{rule}'", f"train.method='{method}'"]
        return f"{part}-{rule}-{method}", extra + (SMP if method == "smp-lora" else [])

    # run order: the IID table, the variants, then non-IID LoRA before the slower non-IID SMP-LoRA
    def wanted(rule: str, method: str) -> bool:  # SMP-LoRA only on smp_rules (all rules by default)
        return method == "lora" or smp_rules is None or rule in smp_rules

    out = [cell("iid", r, m) for r in rules for m in methods if wanted(r, m)] if "iid" in partitions else []
    out += [(f"iid-{v}-lora", PARTITIONS["iid"] + ["train.method='lora'"] + VARIANTS[v]) for v in variants]
    for part in (p for p in partitions if p != "iid"):
        out += [
            cell(part, r, m) for m in (non_iid_methods or methods) for r in (non_iid_rules or rules) if wanted(r, m)
        ]
    return out


def run_one(runs: Path, name: str, extra: list[str], seed: int) -> Path:
    return fedlora_run(CONFIG, COMMON + extra + [f"run.seed={seed}"], runs / f"{name}-s{seed}")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def loss_change(run: Path) -> str:
    """Members' and non-members' mean loss change from the base (round 0) to the final round, ×1e4."""
    rows = read_metrics(run)
    first, last = rows[0], rows[-1]
    return (
        f"{1e4 * (last['member_loss'] - first['member_loss']):+.1f} / "
        f"{1e4 * (last['nonmember_loss'] - first['nonmember_loss']):+.1f}"
    )


def row(name: str, s: dict, run: Path) -> str:
    g, q, c, dp = s["privacy"]["global"], s["quality"], s["communication"], s["privacy"].get("dp", {})
    clients = s["privacy"].get("clients", {})
    verdict = s["privacy"].get("verdict", {})
    attack, m = best_attack(g)
    cal = g.get(CALIBRATED, {})
    client_best = [best_attack(v)[1]["auc"] for v in clients.values() if v]
    cells_ = [
        name,
        loss_change(run),
        f"{q.get('kid', float('nan')):.4f}",
        f"{q.get('caption_accuracy', float('nan')):.3f}",
        f"{attack}: {m['auc']:.3f} [{m['auc_ci_low']:.2f}, {m['auc_ci_high']:.2f}], ASR {_pct(m['asr'])}",
        f"{_pct(cal['asr'])} / {cal['auc']:.3f}" if cal else "n/a",
        f"{verdict.get('clients_leaking', 'n/a')} of {len(clients)}",
        f"{np.mean(client_best):.3f} ± {np.std(client_best, ddof=1):.3f}" if len(client_best) > 1 else "n/a",
        kib(c["bytes_up_per_client_round"]),
        kib(c["bytes_down_per_client_round"]),
        kib(c.get("bytes_down_per_client_round_max", 0.0)),
    ]
    if dp.get("formal"):
        eps = f"ε = {dp['epsilon']:.1f} (δ = {dp['delta']:g}, {dp['mechanism']})"
    elif dp.get("mechanism") == "implicit-dp":
        eps = "heuristic, no guarantee"
    else:
        eps = "—"
    cells_.append(eps)
    return "| " + " | ".join(cells_) + " |"


def table(runs: Path, plan: list[tuple[str, list[str]]], seed: int, command: str) -> list[str]:
    summaries = {
        name: read_summary(p.parent) for name, _ in plan if (p := runs / f"{name}-s{seed}" / "summary.json").exists()
    }
    if not summaries:
        return []
    any_s = next(iter(summaries.values()))
    g = any_s["privacy"]["global"][CALIBRATED]
    client_n = next(iter(any_s["privacy"]["clients"].values()))[CALIBRATED]
    attacks = ", ".join(f"`{a}`" for a in any_s["privacy"]["global"])
    lines = [
        "## Aggregation rules × methods, and DP (default federated config)",
        "",
        "Written by `scripts/rules_table.py`; reproduce with",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Every row is one `fedlora run {CONFIG}` (8 clients × 24 members, 10 rounds × 60 local steps, rank 16 on the "
        f"attention and feed-forward projections, lr 1e-2, seed {seed}) with `{' '.join(COMMON)}`; SMP-LoRA rows add "
        f"`{' '.join(SMP)}`. `dirichlet` is the label-skewed partition (α = 0.5). Attacks ({attacks}) on the final "
        f"global model use D_te = {g['n_members']} members + {g['n_nonmembers']} non-members; each client's last "
        f"update, as the server sees it, is attacked with that client's own sets ({client_n['n_members']}+"
        f"{client_n['n_nonmembers']}). *Best*: the attack farthest from AUC 0.5 with its 95 % bootstrap interval; "
        "*leaking client updates*: those whose best attack's interval, Bonferroni-corrected for 8 clients × the "
        "attacks, excludes 0.5 (`privacy.verdict`). KID: 64 generated vs. 64 member images; caption accuracy: the "
        "public-data digit probe on 64 generated images. Bytes are serialised ArrayRecord sizes per client and "
        "round (KiB; FLoRA's download grows with the clients stacked, `down max` is its largest round). Δ loss: "
        "change of the global model's mean denoising loss on 64 members / 64 non-members from the base (round 0) "
        "to round 10, fixed (t, ε) draws — how much each run fitted its members.",
        "",
        "What the global model is for each rule: FedAvg/FFA the averaged adapter; FLoRA the merged sum of all "
        "rounds' stacks; FlexLoRA (`svd`) the exact weighted mean of the clients' updates (clients receive its "
        "rank-rₖ truncation); FedSA the average of the personalised models Bₖ·A (B never leaves a client — it is "
        "sent separately for this audit only and not counted in `up`).",
        "",
        "| run | Δ loss ×1e4 members / non-members | KID ↓ | caption acc ↑ | global model: best attack, AUC [95 % CI], "
        "ASR % | loss-calibrated ASR % / AUC | leaking client updates | client updates: best AUC, mean ± std | up KiB "
        "| down KiB | down max KiB | DP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [row(name, s, runs / f"{name}-s{seed}") for name, s in summaries.items()]
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", nargs="+", default=list(PARTITIONS), choices=list(PARTITIONS))
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument(
        "--non-iid-methods",
        nargs="+",
        default=None,
        choices=list(METHODS),
        help="methods for the non-IID partitions (default: --methods)",
    )
    ap.add_argument(
        "--non-iid-rules", nargs="+", default=None, choices=list(RULES), help="rules for the non-IID partitions"
    )
    ap.add_argument(
        "--smp-rules",
        nargs="+",
        default=None,
        choices=list(RULES),
        help="the rules that get an SMP-LoRA row (default: every rule in --rules)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/rules-default")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    runs = (ROOT / args.runs).resolve()
    plan = cells(
        args.partitions,
        args.rules,
        args.methods,
        args.variants,
        args.non_iid_methods,
        args.smp_rules,
        args.non_iid_rules,
    )
    if not args.table_only:
        for name, extra in plan:
            run_one(runs, name, extra, args.seed)
    archive([runs / f"{name}-s{args.seed}" for name, _ in plan], ARCHIVE)
    command = (
        "RAY_ADDRESS=local .venv/bin/python scripts/rules_table.py"
        f" --partitions {' '.join(args.partitions)} --rules {' '.join(args.rules)} --methods {' '.join(args.methods)}"
        + (f" --variants {' '.join(args.variants)}" if args.variants else " --variants")
        + (f" --non-iid-methods {' '.join(args.non_iid_methods)}" if args.non_iid_methods else "")
        + (f" --non-iid-rules {' '.join(args.non_iid_rules)}" if args.non_iid_rules else "")
        + (f" --smp-rules {' '.join(args.smp_rules)}" if args.smp_rules else "")
        + f" --seed {args.seed}"
    )
    lines = table(runs, plan, args.seed, command)
    write_section(SECTION, lines, ROOT / args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
