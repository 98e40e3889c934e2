"""Flower ServerApp: discover clients, run the LoRA strategy, log rounds, write the run folder.

``app`` serves ``flwr run .`` (config from the run config); ``create_server_app(cfg)`` is what
``fedlora run`` passes to the simulation engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from tqdm.auto import tqdm

from fedlora.config import ConfigError, ExperimentConfig, load_config
from fedlora.evaluation.tracking import LossTracker
from fedlora.finalize import RunResult, finalize_run
from fedlora.models.lora import ModelView
from fedlora.outputs import SPLITS_FILE, RunOutputs
from fedlora.preflight import preflight
from fedlora.privacy.dp import build_dp_mode
from fedlora.protocol import CONFIG, METRICS, PARTITION_ID, integer
from fedlora.reports import Timing
from fedlora.rounds import RoundLog
from fedlora.rules import build_rule
from fedlora.runtime import get_runtime, get_splits
from fedlora.secure_aggregation import SecAggSettings, secure_summary

from .secure_aggregation import run_secure_rounds
from .strategy import AccountedFedAvgStrategy, LoraStrategy, to_record
from .wire import CountingGrid

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DISCOVERY_TIMEOUT_S = 300.0


def config_from_run_config(run_config: Any) -> ExperimentConfig:
    """``flwr run`` path: ``config`` names a TOML (relative to the app), ``overrides`` adds k=v pairs."""
    name = str(run_config.get("config", "configs/default.toml"))
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / name
    overrides = [o for o in str(run_config.get("overrides", "")).split() if o]
    return load_config(path, overrides)


def discover_clients(grid: Grid, expected: int, timeout: float = DISCOVERY_TIMEOUT_S) -> dict[int, int]:
    """Wait for all nodes, then ask each for its partition id: node id -> partition id."""
    deadline = time.monotonic() + timeout
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {expected} clients connected within {timeout:.0f} s")
        time.sleep(0.5)
        node_ids = list(grid.get_node_ids())
    queries = [
        Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=nid, message_type="query") for nid in node_ids
    ]
    replies = list(grid.send_and_receive(queries, timeout=timeout))
    failed = [r for r in replies if r.has_error()]
    if failed or len(replies) != len(node_ids):
        reasons = [str(r.error.reason) for r in failed][:3]
        raise RuntimeError(
            f"client discovery: {len(replies) - len(failed)} of {len(node_ids)} answered; errors {reasons}"
        )
    partition_of = {r.metadata.src_node_id: integer(r.content.metric_records[METRICS], PARTITION_ID) for r in replies}
    pids = sorted(partition_of.values())
    if pids != list(range(expected)):
        raise RuntimeError(f"clients report partition ids {pids}; expected each of 0..{expected - 1} exactly once")
    return partition_of


def run_federated(grid: Grid, cfg: ExperimentConfig) -> tuple[Path, ModelView]:
    """The whole server side of a run; returns the run folder and the final global model."""
    started = time.perf_counter()
    preflight(cfg)  # bad data, splits or base model: refused before the run folder exists
    outputs = RunOutputs.create(cfg)
    splits = get_splits(cfg)
    splits.save(outputs.path(SPLITS_FILE))
    runtime = get_runtime(cfg)
    tracker = LossTracker(cfg, runtime, splits)
    partition_of = discover_clients(grid, cfg.federation.num_clients)
    wire = CountingGrid(grid)
    rule = build_rule(cfg).start(runtime.initial)
    dp = build_dp_mode(cfg)
    log = RoundLog()
    strategy_cls = AccountedFedAvgStrategy if dp.uses_flower_aggregation else LoraStrategy
    strategy = strategy_cls(
        rule=rule,
        log=log,
        partition_of=partition_of,
        fraction=cfg.federation.fraction_train,
        seed=cfg.run.seed,
        config_text=cfg.to_toml(),
    )
    runner = strategy if cfg.federation.secure_aggregation else dp.wrap(strategy)
    timings = Timing()
    progress = tqdm(total=cfg.federation.rounds, desc=f"{cfg.run.name}: rounds", unit="round")

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        t0 = time.perf_counter()
        strategy.sync_global(arrays)
        losses = tracker(rule.global_view())
        entry = log[server_round]
        for key, value in wire.take().items():
            setattr(entry, key, value)
        row = {"round": server_round, **losses, **log.row(server_round), **dp.round_metrics(log, server_round)}
        timings.train_s += row.get("round_s", 0.0)
        outputs.append_metrics(row)
        if server_round > 0:
            progress.update(1)
            progress.set_postfix(member_loss=f"{losses['member_loss']:.4f}", gap=f"{losses['loss_gap']:+.4f}")
        timings.eval_s += time.perf_counter() - t0
        return MetricRecord(dict(losses))

    secure = None
    if cfg.federation.secure_aggregation:
        weights = [1.0] if dp.uniform_weights else [float(len(c.members)) for c in splits.clients]
        settings = SecAggSettings.from_config(cfg, max_weight=max(weights))
        run_secure_rounds(grid, cfg, strategy, dp, settings, evaluate, wire)
        secure = secure_summary(cfg, settings, log)
    else:
        result = runner.start(
            grid=wire,
            initial_arrays=to_record(runtime.initial),
            num_rounds=cfg.federation.rounds,
            timeout=cfg.federation.round_timeout_s,
            train_config=ConfigRecord({}),
            evaluate_fn=evaluate,
        )
        strategy.sync_global(result.arrays)
    progress.close()
    if not log.trained():
        raise RuntimeError("no round produced a model update; see the client errors in the log above")
    final = rule.global_view()
    run_result = RunResult(timings, log.communication(), dp=dp.summary(log), secure_aggregation=secure)
    finalize_run(outputs, cfg, runtime, splits, final, run_result, started, rule.client_views())
    return outputs.root, final


def create_server_app(cfg: ExperimentConfig | None = None, result_holder: dict | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved = cfg if cfg is not None else config_from_run_config(context.run_config)
        # One thread per process like the clients: with more threads than free cores, OpenMP's
        # spin-waiting made a UNet forward ~200x slower on this 2-core machine (measured).
        torch.set_num_threads(resolved.simulation.num_cpus_per_client)
        run_dir, final = run_federated(grid, resolved)
        if result_holder is not None:
            result_holder.update(run_dir=run_dir, global_view=final)

    return app


app = create_server_app()
__all__ = ["app", "create_server_app", "ConfigError"]
