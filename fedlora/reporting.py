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
from .evaluation.membership import evaluate_membership
from .outputs import ADAPTER_DIR, GLOBAL_VIEW, ROC_FIGURE, SAMPLES_FILE, TRAINING_FIGURE, RunOutputs
from .reports import Communication as SummaryCommunication, Metrics, Privacy, RunSummary, Timing, write_reports
from .reports.figures import plot_roc, plot_training

RunTimings = Timing  # server/app.py's name for it


class Communication(SummaryCommunication):
    """summary.json's communication block, from the server's per-round log."""

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
    timing: Timing
    communication: SummaryCommunication
    privacy: dict[str, Any] = field(default_factory=lambda: {"global": {}, "clients": {}})
    quality: dict[str, float] = field(default_factory=dict)
    dp: dict[str, Any] = field(default_factory=dict)  # the DP mechanism, its parameters and (ε, δ)
    adapter_rank: int = 0  # rank of the saved adapter/ (a dense global model is saved by exact SVD)


def build_summary(cfg: ExperimentConfig, result: RunResult) -> RunSummary:
    return RunSummary(
        method=cfg.train.method,
        aggregation=cfg.federation.aggregation,
        num_clients=cfg.federation.num_clients,
        rounds=cfg.federation.rounds,
        seed=cfg.run.seed,
        # the embedded base keeps its name: its install path is machine-specific
        base_model=EMBEDDED_BASE if cfg.model.base_model == EMBEDDED_BASE else resolve_base_model(cfg.model.base_model),
        dataset=cfg.data.dataset,
        privacy=Privacy.from_dict({**result.privacy, "dp": result.dp or {"mechanism": "none"}}),
        adapter_rank=result.adapter_rank,
        client_ranks=[client_rank(cfg, c) for c in range(cfg.federation.num_clients)],
        quality=Metrics(result.quality),
        timing=result.timing,
        communication=result.communication,
    )


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
) -> RunSummary:
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
) -> RunSummary:
    """Samples, quality, membership audit, figures, summary.json and the reports of a finished run."""
    import time

    runtime.show(view)
    save_samples(outputs, cfg, runtime, splits)
    result.quality = measure_quality(cfg, runtime, splits, view)
    result.privacy, attack_results = evaluate_membership(cfg, runtime, load_dataset(cfg.data), splits, view, client_views)
    if attack_results:
        plot_roc(outputs.path(ROC_FIGURE), attack_results)
    plot_training(outputs.path(TRAINING_FIGURE), outputs.read_metrics())
    result.timing.eval_s += time.perf_counter() - t0
    if started is not None:
        result.timing.total_s = time.perf_counter() - started
    summary = build_summary(cfg, result)
    summary.write(outputs.root)
    write_reports(outputs.root)
    return summary
