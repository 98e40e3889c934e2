"""What a finished run leaves behind: the adapter, the audited models, samples, quality, the
membership audit, figures, summary.json and the reports (``fedlora.reports`` renders them)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import EMBEDDED_BASE, ExperimentConfig
from .data import Splits, load_dataset
from .evaluation.membership import evaluate_membership
from .evaluation.quality import measure_quality
from .evaluation.samples import save_member_samples
from .models.base import resolve_base_model
from .models.export import adapter_of_view
from .models.lora import ModelView, save_adapter, save_view
from .outputs import ADAPTER_DIR, GLOBAL_VIEW, ROC_FIGURE, SAMPLES_FILE, TRAINING_FIGURE, RunOutputs
from .reports import Communication, Failures, Metrics, Privacy, RunSummary, Timing, write_reports
from .reports.figures import plot_roc, plot_training
from .rules import client_rank
from .runtime import ModelRuntime
from .secure_aggregation import ORACLE_LABEL


@dataclass
class RunResult:
    timing: Timing
    communication: Communication
    privacy: dict[str, Any] = field(default_factory=lambda: {"global": {}, "clients": {}})
    quality: dict[str, float] = field(default_factory=dict)
    dp: dict[str, Any] = field(default_factory=dict)  # the DP mechanism, its parameters and (ε, δ)
    adapter_rank: int = 0  # rank of the saved adapter/ (a dense global model is saved by exact SVD)
    secure_aggregation: dict[str, Any] | None = None  # None: the server saw every update
    failures: Failures | None = None  # failed replies, rejected updates, skipped rounds (RoundLog.failures)


def build_summary(cfg: ExperimentConfig, result: RunResult, skipped_files: Sequence[str] = ()) -> RunSummary:
    """``skipped_files``: the images the data loader left out (recorded whenever data.on_bad_image = "skip")."""
    skipped = Metrics(count=len(skipped_files), files=list(skipped_files)) if cfg.data.on_bad_image == "skip" else None
    return RunSummary(
        method=cfg.train.method,
        aggregation=cfg.federation.aggregation,
        num_clients=cfg.federation.num_clients,
        rounds=cfg.federation.rounds,
        seed=cfg.run.seed,
        # the embedded base keeps its name: its install path is machine-specific
        base_model=EMBEDDED_BASE if cfg.model.base_model == EMBEDDED_BASE else resolve_base_model(cfg.model.base_model),
        dataset=cfg.data.dataset,
        skipped_images=skipped,
        privacy=Privacy.from_dict({**result.privacy, "dp": result.dp or {"mechanism": "none"}}),
        adapter_rank=result.adapter_rank,
        client_ranks=[client_rank(cfg, c) for c in range(cfg.federation.num_clients)],
        quality=Metrics(result.quality),
        timing=result.timing,
        communication=result.communication,
        secure_aggregation=None if result.secure_aggregation is None else Metrics(result.secure_aggregation),
        failures=result.failures,
    )


def finalize_run(
    outputs: RunOutputs,
    cfg: ExperimentConfig,
    runtime: ModelRuntime,
    splits: Splits | None,
    view: ModelView,
    result: RunResult,
    started: float,
    client_views: Mapping[int, ModelView] | None = None,
) -> RunSummary:
    """Write every output; ``started`` (a perf_counter time) closes the run's wall time.

    ``splits`` None: a per-silo run, whose server holds no data; its ``result.privacy`` holds the
    silos' own audits, and there are no member samples or quality scores to compute here."""
    t0 = time.perf_counter()
    adapter, adapter_model = adapter_of_view(view, runtime.initial, runtime.scaling, cfg.model)
    save_adapter(
        outputs.path(ADAPTER_DIR),
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in adapter.items()},
        adapter_model,
    )
    result.adapter_rank = adapter_model.lora_rank
    # the audited models, so that `fedlora evaluate` can attack them again without training
    save_view(outputs.view_path(GLOBAL_VIEW), view)
    client_views = client_views or {}
    for cid in client_views:  # a run's server wrote them as they arrived (AuditViews.on_disk)
        if not outputs.view_path(int(cid)).is_file():
            save_view(outputs.view_path(int(cid)), client_views[cid])
    summary = evaluate_outputs(outputs, cfg, runtime, splits, view, client_views, result, t0, started)
    summary.write(outputs.root)
    write_reports(outputs.root)
    return summary


def evaluate_outputs(
    outputs: RunOutputs,
    cfg: ExperimentConfig,
    runtime: ModelRuntime,
    splits: Splits | None,
    view: ModelView,
    client_views: Mapping[int, ModelView],
    result: RunResult,
    t0: float,
    started: float | None,
) -> RunSummary:
    """Samples, quality, membership audit and figures of a finished run; its summary (not yet written)."""
    runtime.show(view)
    attack_results: dict = {}
    skipped: Sequence[str] = ()
    if splits is not None:
        save_member_samples(outputs.path(SAMPLES_FILE), cfg, runtime, splits)
        result.quality = measure_quality(cfg, runtime, splits, view)
        dataset = load_dataset(cfg.data)
        skipped = dataset.skipped_files
        result.privacy, attack_results = evaluate_membership(cfg, runtime, dataset, splits, view, client_views)
    if attack_results:
        plot_roc(outputs.path(ROC_FIGURE), attack_results)
    plot_training(outputs.path(TRAINING_FIGURE), outputs.read_metrics())
    result.timing.eval_s += time.perf_counter() - t0
    if started is not None:
        result.timing.total_s = time.perf_counter() - started
    summary = build_summary(cfg, result, skipped)
    if result.secure_aggregation and summary.privacy.clients:
        summary.privacy.clients_from = ORACLE_LABEL  # under SecAgg+ only the simulation's oracle has client updates
    return summary
