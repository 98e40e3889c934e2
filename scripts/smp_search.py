"""The search for an SMP-LoRA setting that defends, on a shortened centralized paper config.

Each candidate is a real `fedlora run` of configs/paper-centralized.toml cut to
`federation.rounds=4` (2,400 steps instead of 6,000) with the candidate's `[privacy]` levers.
Selection never touches the reported runs' test data: candidates train on *search seeds*
(100, 101, ...: other member/non-member draws and inits), and their own D_te is the validation
data; the chosen setting is then confirmed at full length on seeds 0–2 (scripts/paper_table.py).
Each candidate is audited with the strong attacks below; its leakage is the largest
|AUC − 0.5|/0.5 over them, against KID. Writes the `smp-search` section of docs/results.md and
the Pareto plot docs/smp_pareto.png.

  RAY_ADDRESS=local .venv/bin/python scripts/smp_search.py                   # every candidate
  RAY_ADDRESS=local .venv/bin/python scripts/smp_search.py --only lora smp-l1
  .venv/bin/python scripts/smp_search.py --table-only
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from sweep import MLP_PROXY, ROOT, archive, base_quality, fedlora_run, read_metrics, read_summary, write_section

CONFIG = "configs/paper-centralized.toml"
SHORT = ["federation.rounds=4"]
ATTACKS = [
    "learned-mlp",
    "loss-threshold",
    "loss-calibrated",
    "pia-calibrated",
    "secmi-calibrated",
    "score-norm",
    "score-norm-calibrated",
    "gradient-norm",
    "clid-calibrated",
]
COMMON = [
    f"evaluation.attacks={ATTACKS}",
    "evaluation.loss_attack_draws=32",
    "evaluation.attack_feature_draws=4",
    "evaluation.kid_fid=true",
]
SMP = ["train.method='smp-lora'"]


def smp(lam: float, lr: float, steps: int, batch: int, features: str = "error", draws: int = 1) -> list[str]:
    return SMP + [
        f"privacy.mi_lambda={lam}",
        f"privacy.attacker_learning_rate={lr}",
        f"privacy.attacker_steps={steps}",
        f"privacy.attacker_batch_size={batch}",
        f"privacy.attacker_features='{features}'",
        f"privacy.attacker_feature_draws={draws}",
        *MLP_PROXY,
    ]


def profile(
    lam: float,
    anchor: float,
    ascent: float = 1.0,
    draws: int = 8,
    bands: int = 1,
    closed_loop: bool = True,
    snapshot: bool = False,
) -> list[str]:
    """A proxy on calibrated loss profiles (fedlora/privacy/loss_profile.py): a logistic regression, lr 1e-2,
    4 steps of 16 + 16 per LoRA step, its reward capped at chance, the ascent bounded, a base anchor."""
    return SMP + [
        f"privacy.mi_lambda={lam}",
        "privacy.attacker_features='calibrated-profile'",
        f"privacy.attacker_feature_draws={draws}",
        f"privacy.attacker_profile_bands={bands}",
        "privacy.attacker_refresh_steps=50",
        f"privacy.profile_closed_loop={'true' if closed_loop else 'false'}",
        f"privacy.profile_snapshot={'true' if snapshot else 'false'}",
        "privacy.attacker_hidden=[]",
        "privacy.attacker_dropout=0.0",
        "privacy.attacker_learning_rate=0.01",
        "privacy.attacker_steps=4",
        "privacy.attacker_batch_size=16",
        "privacy.cap_gain_at_chance=true",
        f"privacy.max_ascent={ascent}",
        f"privacy.base_anchor={anchor}",
    ]


# name -> overrides; the order is the search's: the baselines, then one lever at a time
CANDIDATES: dict[str, list[str]] = {
    "lora": ["train.method='lora'"],
    "smp-l1": smp(1.0, 1e-4, 1, 4),  # the paper configs' setting (docs/results.md, Table 1)
    "smp-l5-fast": smp(5.0, 1e-3, 2, 8),
    "smp-l5-fast-cal": smp(5.0, 1e-3, 2, 8, "calibrated"),
    "smp-l20-fast-cal": smp(20.0, 1e-3, 2, 8, "calibrated"),
    "smp-l5-fast-cal-k4": smp(5.0, 1e-3, 4, 8, "calibrated"),
    "smp-l5-fast-cal-d4": smp(5.0, 1e-3, 2, 8, "calibrated", 4),
    "smp-l10-fast-cal": smp(10.0, 1e-3, 2, 8, "calibrated"),
    # the privacy term's weight relative to the diffusion loss, λL/D with D = 1 − λG, saturates at
    # L/|G| as λ grows (≈ 0.09, 0.10, 0.11 at λ = 5, 10, 20 with G ≈ log ½), and AdamW ignores the
    # overall 1/D scale: so λ ≤ 5 is where the push can be dosed (≈ 0.05 at λ = 1, 0.07 at λ = 2)
    "smp-l2-fast-cal": smp(2.0, 1e-3, 2, 8, "calibrated"),
    "smp-l1-fast-cal": smp(1.0, 1e-3, 2, 8, "calibrated"),
    # the proxy sees one number per sample, its relative loss change against the base (the
    # loss-calibrated attack's score), so that a proxy at chance pushes nothing
    "smp-l5-fast-calloss": smp(5.0, 1e-3, 2, 8, "calibrated-loss"),
    "smp-l20-fast-calloss": smp(20.0, 1e-3, 2, 8, "calibrated-loss"),
    # the frontier between LoRA and λ = 2: a weaker push, and at λ = 2 a proxy with twice the steps
    "smp-l0.5-fast-cal": smp(0.5, 1e-3, 2, 8, "calibrated"),
    "smp-l2-fast-cal-k4": smp(2.0, 1e-3, 4, 8, "calibrated"),
    # a proxy as sharp as the loss attacks (8 fixed draws per sample), its ascent bounded by the descent, and a
    # trust region around the base model (mean ‖ε_θ − ε_base‖² on the step's inputs, weight 1 or 5)
    "smp-l20-profile-a5": profile(20.0, 5.0),
    "smp-l20-profile-a1": profile(20.0, 1.0),
    "smp-l20-profile-a20": profile(20.0, 20.0),
    "smp-l0-profile-a20": profile(0.0, 20.0),  # the anchor alone: no privacy push
    # the proxy trains on a snapshot of members and D^nm_aux by one model: the members recomputed every step next to
    # D^nm_aux rows up to 50 steps old taught it to read the staleness (its test accuracy 0.39 on the default config)
    "smp-l20-profile-a20-snap": profile(20.0, 20.0, snapshot=True),
}
SECTION = "smp-search"
FIGURE = "docs/smp_pareto.png"


def leakage(s: dict[str, Any]) -> tuple[str, float, dict[str, Any]]:
    attacks = s["privacy"]["global"]
    name = max(attacks, key=lambda a: attacks[a]["auc_dev"])
    return name, attacks[name]["auc_dev"], attacks[name]


def more_levers(p: dict[str, Any]) -> str:
    """The levers beyond the table's columns that a candidate sets away from the paper's (— for none)."""
    out = []
    if p.get("attacker_features") == "calibrated-profile":
        out.append(f"{p.get('attacker_profile_bands', 4)} band(s)")
        if not p.get("profile_closed_loop", True):
            out.append(f"refresh every {p.get('attacker_refresh_steps')} steps only")
        if p.get("profile_snapshot"):
            out.append("proxy trains on snapshots")
    if "attacker_hidden" in p and list(p["attacker_hidden"]) != [512, 256]:
        out.append("linear proxy" if not p["attacker_hidden"] else f"proxy {p['attacker_hidden']}")
    if p.get("cap_gain_at_chance"):
        out.append("gain capped at chance")
    if p.get("max_ascent"):
        out.append(f"ascent ≤ {p['max_ascent']:g}× descent")
    if p.get("base_anchor"):
        out.append(f"base anchor {p['base_anchor']:g}")
    return ", ".join(out) or "—"


def table(rows: list[tuple[str, dict[str, Any]]], seed: int, base: dict[str, Any]) -> list[str]:
    lines = [
        "## The SMP-LoRA search (shortened centralized config, search seed)",
        "",
        "Written by `scripts/smp_search.py`; reproduce with `RAY_ADDRESS=local .venv/bin/python scripts/smp_search.py "
        f"--seed {seed}`.",
        "",
        f"`{CONFIG}` with `{' '.join(SHORT)}` (2,400 steps), seed {seed}: a search seed, whose member/non-member "
        "draw is not the reported runs' (seeds 0–2), so no reported test sample informs the choice. Attacks: "
        f"{', '.join(ATTACKS)} (32 loss draws, 4 feature draws for the MLP); leakage = the largest |AUC − 0.5|/0.5 "
        "over them on this run's D_te (50 + 50); ASR at the threshold each attack fixes on D_aux; KID on 64 vs 64 "
        "images; members' loss Δ = the members' mean denoising loss after the last round minus before the first "
        "(< 0: the model fits its members); KID held-out = the same samples' KID against 64 non-members, never "
        "trained on (`quality.kid_heldout`; for runs made before it, added by `scripts/heldout_kid.py`, which "
        "re-generates the run's samples and checks that the member KID comes out as recorded). "
        "Targets (issue 12): leakage ≤ 0.25 and ASR ≤ 60 % for every attack, "
        "KID ≤ 1.5 × LoRA's. The base model itself (no adapter; `scripts/sweep.py` `base_quality`) scores KID "
        f"{base['kid']:.4f} and held-out KID {base['kid_heldout']:.4f} on the same captions and references: "
        "fine-tuning on these 100 in-distribution digits buys little sample quality, so the KID target asks a "
        "defence above all not to damage the model.",
        "",
        "| candidate | λ | attacker lr | k | batch | features | draws | more levers | leakage (best attack) "
        "| its ASR % | max ASR % (attack) | loss-calibrated AUC | members' loss Δ | KID ↓ | KID ÷ LoRA's "
        "| KID held-out ↓ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lora_kid = next((s["quality"].get("kid") for name, s in rows if name == "lora"), None)
    for name, s in rows:
        attack, dev, m = leakage(s)
        attacks = s["privacy"]["global"]
        top = max(attacks, key=lambda a: attacks[a]["asr"])
        kid = s["quality"].get("kid", float("nan"))
        heldout = f"{s['quality']['kid_heldout']:.4f}" if "kid_heldout" in s["quality"] else "—"
        ratio = f"{kid / lora_kid:.2f}" if lora_kid else "—"
        delta = s.get("_member_loss_change")
        change = "—" if delta is None else f"{delta:+.4f}"
        shown = s.get("_privacy", {}) if name != "lora" else {}
        cells = [
            "{:g}".format(shown["mi_lambda"]) if "mi_lambda" in shown else "—",
            "{:g}".format(shown["attacker_learning_rate"]) if "attacker_learning_rate" in shown else "—",
            *(
                str(shown.get(k, "—"))
                for k in ("attacker_steps", "attacker_batch_size", "attacker_features", "attacker_feature_draws")
            ),
            more_levers(shown),
        ]
        cal = s["privacy"]["global"].get("loss-calibrated", {})
        lines.append(
            f"| {name} | {' | '.join(cells)} | {dev:.2f} ({attack}) | {100 * m['asr']:.1f} | "
            f"{100 * attacks[top]['asr']:.1f} ({top}) | {cal.get('auc', float('nan')):.3f} | {change} | {kid:.4f} | "
            f"{ratio} | {heldout} |"
        )
    return lines + ["", f"![SMP-LoRA privacy-quality trade-off]({Path(FIGURE).name})", ""]


def figure(rows: list[tuple[str, dict[str, Any]]], path: Path, base: dict[str, Any] | None = None) -> None:
    """Leakage against KID (the issue's axes), and beside it against the held-out KID where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("kid", "KID vs 64 member images (the target's axis)")]
    if any("kid_heldout" in s["quality"] for _, s in rows):
        panels.append(("kid_heldout", "KID vs 64 held-out non-members"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        pts = [(name, s["quality"].get(key, np.nan), leakage(s)[1]) for name, s in rows]
        pts = [p for p in pts if np.isfinite(p[1])]
        for name, kid, dev in pts:
            ax.scatter([kid], [dev], color="tab:red" if name == "lora" else "tab:blue")
            ax.annotate(name, (kid, dev), textcoords="offset points", xytext=(5, 4), fontsize=8)
        best, xs, ys = np.inf, [], []
        for _, kid, dev in sorted(pts, key=lambda p: p[2]):  # the Pareto front: no other point better on both
            if kid < best:
                best = kid
                xs.append(kid)
                ys.append(dev)
        order = np.argsort(xs)
        ax.plot(np.array(xs)[order], np.array(ys)[order], color="grey", lw=1, ls="--", label="Pareto front")
        ax.axhline(0.25, color="tab:green", lw=0.8, ls=":", label="target |AUC−0.5|/0.5 ≤ 0.25")
        if base is not None and key in base:
            ax.axvline(base[key], color="grey", lw=0.8, ls="-.", label="the base model (no adapter)")
        lora = next((kid for name, kid, _ in pts if name == "lora"), None)
        if lora is not None and key == "kid":
            ax.axvline(1.5 * lora, color="tab:orange", lw=0.8, ls=":", label="target KID ≤ 1.5 × LoRA's")
        ax.set_xlabel(f"{label}, lower = better")
        ax.set_ylabel("leakage: max |AUC−0.5|/0.5 over the attacks")
        ax.legend(fontsize=8)
    fig.suptitle("SMP-LoRA candidates (shortened centralized config, search seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--runs", default="runs/smp-search")
    ap.add_argument("--out", default="docs/results.md")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    runs = (ROOT / args.runs).resolve()
    folders = {name: runs / f"{name}-s{args.seed}" for name in args.only}
    if not args.table_only:
        for name, out in folders.items():
            fedlora_run(CONFIG, COMMON + SHORT + CANDIDATES[name] + [f"run.seed={args.seed}"], out)
    archive(list(folders.values()), "smp-search")
    rows = []
    for name, out in folders.items():
        if (out / "summary.json").exists():
            s = read_summary(out)
            import tomllib

            s["_privacy"] = tomllib.loads((out / "config.toml").read_text())["privacy"]
            losses = [r["member_loss"] for r in read_metrics(out) if "member_loss" in r]
            s["_member_loss_change"] = losses[-1] - losses[0] if len(losses) > 1 else None
            rows.append((name, s))
    base = base_quality(CONFIG, COMMON + SHORT + [f"run.seed={args.seed}"], "smp-search", f"base-s{args.seed}")
    if rows:
        figure(rows, ROOT / FIGURE, base)
    write_section(SECTION, table(rows, args.seed, base), ROOT / args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
