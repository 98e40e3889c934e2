"""What a finished run leaves behind: adapter, samples, summary.json, figures, report.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from .config import ExperimentConfig
from .data import Splits, load_dataset, public_subset
from .evaluation.quality import caption_probe_or_none
from .evaluation.samples import generate, save_grid
from .evaluation.tracking import pick_eval_ids
from .models.base import resolve_base_model
from .models.lora import save_adapter
from .outputs import ADAPTER_DIR, REPORT_FILE, SAMPLES_FILE, SUMMARY_FILE, TRAINING_FIGURE, RunOutputs


@dataclass
class RunTimings:
    total_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0


@dataclass
class Communication:
    bytes_up_per_client_round: float = 0.0
    bytes_down_per_client_round: float = 0.0


@dataclass
class RunResult:
    timing: RunTimings
    communication: Communication
    privacy: dict[str, Any] = field(default_factory=lambda: {"global": {}, "clients": {}})
    quality: dict[str, float] = field(default_factory=dict)


def build_summary(cfg: ExperimentConfig, result: RunResult) -> dict[str, Any]:
    return {
        "method": cfg.train.method,
        "aggregation": cfg.federation.aggregation,
        "num_clients": cfg.federation.num_clients,
        "rounds": cfg.federation.rounds,
        "seed": cfg.run.seed,
        "base_model": resolve_base_model(cfg.model.base_model),
        "dataset": cfg.data.dataset,
        "privacy": result.privacy,
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


def measure_quality(cfg: ExperimentConfig, runtime, splits: Splits, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Caption-probe accuracy of the final global model, of the base (B = 0) and of real members."""
    if cfg.evaluation.quality_samples == 0:
        return {}
    dataset = load_dataset(cfg.data)
    probe = caption_probe_or_none(public_subset(dataset, cfg.data), seed=cfg.run.seed)
    if probe is None:
        return {}
    member_ids, _ = pick_eval_ids(splits, cfg.evaluation.quality_samples, cfg.run.seed + 1)
    idx = dataset.indices_of(member_ids)
    captions = [dataset.captions[i] for i in idx]
    kwargs = dict(steps=cfg.evaluation.sample_steps, guidance_scale=cfg.evaluation.guidance_scale, seed=cfg.run.seed + 1)
    out = {"caption_accuracy_real_members": probe.accuracy(dataset.images[idx], captions)}
    runtime.set_lora({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in state.items()})
    out["caption_accuracy_base"] = probe.accuracy(generate(runtime.pipe, captions, **kwargs), captions)
    runtime.set_lora(state)
    out["caption_accuracy"] = probe.accuracy(generate(runtime.pipe, captions, **kwargs), captions)
    out["caption_accuracy_n"] = float(len(captions))
    return out


def plot_training(outputs: RunOutputs, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(rounds, [r["member_loss"] for r in rows], "o-", label="members (global model)")
    axes[0].plot(rounds, [r["nonmember_loss"] for r in rows], "s--", label="non-members (global model)")
    axes[0].set_xlabel("round")
    axes[0].set_ylabel("mean denoising loss")
    axes[0].legend()
    trained = [r for r in rows if r.get("clients")]
    for r in trained:
        losses = [c["train_loss"] for c in r["clients"].values()]
        axes[1].scatter([r["round"]] * len(losses), losses, s=10, color="tab:blue", alpha=0.6)
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("client local training loss")
    axes[1].set_title("each dot: one client's round")
    fig.tight_layout()
    fig.savefig(outputs.path(TRAINING_FIGURE), dpi=110)
    plt.close(fig)


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
        lines.append("| attack | AUC | |AUC-0.5|/0.5 | ASR | TPR@1%FPR | TPR@5%FPR | members | non-members |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for attack, m in summary["privacy"]["global"].items():
            lines.append(
                f"| {attack} | {m['auc']:.3f} | {m['auc_dev']:.3f} | {m['asr']:.3f} | {m['tpr_at_1pct_fpr']:.3f} | "
                f"{m['tpr_at_5pct_fpr']:.3f} | {m['n_members']} | {m['n_nonmembers']} |"
            )
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
    elif q:
        lines += [f"- {k}: {v:.4f}" for k, v in q.items()]
    else:
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


def finalize_run(
    outputs: RunOutputs, cfg: ExperimentConfig, runtime, splits: Splits, state: Mapping[str, torch.Tensor],
    result: RunResult, started: float,
) -> dict:
    """Write every output; ``started`` (a perf_counter time) closes the run's wall time."""
    import time

    t0 = time.perf_counter()
    runtime.set_lora(state)
    save_adapter(outputs.path(ADAPTER_DIR), state, cfg.model)
    save_samples(outputs, cfg, runtime, splits)
    result.quality.update(measure_quality(cfg, runtime, splits, state))
    rows = outputs.read_metrics()
    plot_training(outputs, rows)
    result.timing.eval_s += time.perf_counter() - t0
    result.timing.total_s = time.perf_counter() - started
    summary = build_summary(cfg, result)
    outputs.write_json(SUMMARY_FILE, summary)
    write_report(outputs, cfg, summary, rows, splits)
    return summary
