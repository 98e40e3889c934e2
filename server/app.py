"""Flower ServerApp: discover clients, run the LoRA strategy, log rounds, write the run folder.

``app`` serves ``flwr run .`` (config from the run config); ``create_server_app(cfg)`` is what
``fedlora run`` passes to the simulation engine.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from tqdm.auto import tqdm

from fedlora import checkpoint, interrupt
from fedlora.config import ConfigError, ExperimentConfig, load_config, sampled_per_round
from fedlora.evaluation.tracking import LossTracker
from fedlora.finalize import RunResult, finalize_run
from fedlora.models.lora import ModelView
from fedlora.outputs import SPLITS_FILE, RunOutputs
from fedlora.preflight import preflight
from fedlora.privacy.dp import build_dp_mode
from fedlora.protocol import CONFIG, METRICS, PARTITION_ID, integer
from fedlora.reports import Timing
from fedlora.rounds import RoundLog, plain_reason
from fedlora.rules import build_rule
from fedlora.runtime import get_runtime
from fedlora.secure_aggregation import SecAggSettings, secure_summary

from .secure_aggregation import EvaluateFn, run_secure_rounds
from .strategy import AccountedFedAvgStrategy, LoraStrategy, to_record
from .wire import CountingGrid

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DISCOVERY_TIMEOUT_S = 300.0
logger = logging.getLogger("fedlora")


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


def run_rounds(
    runner: Any, grid: Grid, arrays: ArrayRecord, cfg: ExperimentConfig, first_round: int, evaluate: EvaluateFn
) -> ArrayRecord:
    """Flower's ``Strategy.start`` loop (train, aggregate, evaluate), from ``first_round`` on (a resume)."""
    if first_round == 0:
        evaluate(0, arrays)
    for server_round in range(max(1, first_round), cfg.federation.rounds + 1):
        messages = runner.configure_train(server_round, arrays, ConfigRecord({}), grid)
        replies = grid.send_and_receive(messages, timeout=cfg.federation.round_timeout_s)
        aggregated, _ = runner.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        evaluate(server_round, arrays)
    return arrays


def run_federated(
    grid: Grid, cfg: ExperimentConfig, *, resume: Path | None = None, client_state: bool = False
) -> tuple[Path, ModelView]:
    """The whole server side of a run; returns the run folder and the final global model.

    ``resume``: a run folder with a checkpoint, continued from its last complete round.
    ``client_state``: the clients share this machine's run folder (simulation) and save their
    persistent state in its checkpoint, so that a resumed run finds it.
    """
    started = time.perf_counter()
    splits = preflight(cfg)  # bad data, splits or base model: refused before the run folder exists
    saved = checkpoint.load_server(resume) if resume is not None else None
    outputs = RunOutputs(resume) if resume is not None else RunOutputs.create(cfg)
    if saved is None:
        splits.save(outputs.path(SPLITS_FILE))
        checkpoint.write_status(outputs.root, checkpoint.RUNNING)
    else:
        outputs.keep_metrics_upto(saved["round"])
    try:
        return _serve(grid, cfg, outputs, splits, saved, started, client_state)
    except interrupt.RunInterrupted as stop:
        checkpoint.write_status(outputs.root, checkpoint.INTERRUPTED, last_round=stop.last_round)
        raise
    except BaseException as exc:
        checkpoint.write_status(outputs.root, checkpoint.FAILED, reason=plain_reason(f"{type(exc).__name__}: {exc}"))
        raise


def _serve(
    grid: Grid,
    cfg: ExperimentConfig,
    outputs: RunOutputs,
    splits: Any,
    saved: dict[str, Any] | None,
    started: float,
    client_state: bool,
) -> tuple[Path, ModelView]:
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
        fraction=sampled_per_round(cfg) / cfg.federation.num_clients,  # round(n x this) = that count
        seed=cfg.run.seed,
        config_text=cfg.to_toml(),
        max_update_norm=cfg.federation.max_update_norm,
        min_clients=cfg.federation.min_clients_per_round,
    )
    if client_state:
        strategy.client_state_dir = str(checkpoint.checkpoint_dir(outputs.root) / checkpoint.CLIENTS_DIR)
    runner = strategy if cfg.federation.secure_aggregation else dp.wrap(strategy)
    timings = Timing()
    first_round, elapsed_before = 0, 0.0
    if saved is not None:  # after every object is built: building them seeds and draws
        rule.load_state_dict(saved["rule"])
        dp.load_state_dict(saved["dp"])
        log.rounds = saved["log"].rounds
        timings = saved["timings"]
        tracker.reference = saved["tracker_reference"]
        checkpoint.set_rng_state(saved["rng"])
        first_round, elapsed_before = saved["round"] + 1, float(saved["elapsed_s"])
    progress = tqdm(
        total=cfg.federation.rounds, initial=max(0, first_round - 1), desc=f"{cfg.run.name}: rounds", unit="round"
    )

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
        state = {
            "rule": rule.state_dict(),
            "dp": dp.state_dict(),
            "log": log,
            "timings": timings,
            "tracker_reference": tracker.reference,
            "rng": checkpoint.rng_state(),
            "elapsed_s": elapsed_before + time.perf_counter() - started,
        }
        checkpoint.save_server(outputs.root, server_round, state)
        strategy.stop_if_no_client_left()  # the round is on record: a run nobody can continue ends here
        if interrupt.requested() and server_round < cfg.federation.rounds:
            progress.close()
            raise interrupt.RunInterrupted(outputs.root, server_round)
        return MetricRecord(dict(losses))

    secure = None
    if cfg.federation.secure_aggregation:
        weights = [1.0] if dp.uniform_weights else [float(len(c.members)) for c in splits.clients]
        settings = SecAggSettings.from_config(cfg, max_weight=max(weights))
        run_secure_rounds(grid, cfg, strategy, dp, settings, evaluate, wire, first_round)
        secure = secure_summary(cfg, settings, log)
    else:
        arrays = run_rounds(runner, wire, to_record(rule.carried()), cfg, first_round, evaluate)
        strategy.sync_global(arrays)
    progress.close()
    failures = log.failures()
    if failures.occurred:
        logger.warning(
            "%s: %d failed replies, %d rejected updates, %d skipped rounds (summary.json 'failures')",
            cfg.run.name,
            failures.failed_replies,
            failures.rejected_updates,
            failures.skipped_rounds,
        )
    if not log.trained():
        raise RuntimeError("no round produced a model update; see the client errors in the log above")
    final = rule.global_view()
    run_result = RunResult(
        timings, log.communication(), dp=dp.summary(log), secure_aggregation=secure, failures=failures
    )
    finalize_run(outputs, cfg, runtime, splits, final, run_result, started - elapsed_before, rule.client_views())
    checkpoint.finish(outputs.root)
    return outputs.root, final


def create_server_app(
    cfg: ExperimentConfig | None = None, result_holder: dict | None = None, resume: Path | None = None
) -> ServerApp:
    """``cfg`` given: the simulation's server (clients share the run folder); None: ``flwr run``'s."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        resolved = cfg if cfg is not None else config_from_run_config(context.run_config)
        # One thread per process like the clients: with more threads than free cores, OpenMP's
        # spin-waiting made a UNet forward ~200x slower on this 2-core machine (measured).
        torch.set_num_threads(resolved.simulation.num_cpus_per_client)
        run_dir, final = run_federated(grid, resolved, resume=resume, client_state=cfg is not None)
        if result_holder is not None:
            result_holder.update(run_dir=run_dir, global_view=final)

    return app


app = create_server_app()
__all__ = ["app", "create_server_app", "ConfigError"]
