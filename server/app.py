"""Flower ServerApp: discover clients, run the LoRA strategy, log rounds, write the run folder.

``app`` serves ``flwr run .`` (config from the run config, or run config ``resume`` naming a run folder
to continue); ``create_server_app(cfg)`` is what ``fedlora run`` passes to the simulation engine.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from tqdm.auto import tqdm

from fedlora import checkpoint, interrupt
from fedlora.config import ConfigError, ExperimentConfig, load_config, min_clients_present, sampled_per_round
from fedlora.data import uses_silo_data
from fedlora.evaluation.silo import silo_audits, summarise_silo_audits
from fedlora.evaluation.tracking import LossTracker
from fedlora.finalize import RunResult, finalize_run
from fedlora.models.lora import ModelView
from fedlora.outputs import SILOS_FILE, SPLITS_FILE, VIEWS_DIR, RunOutputs
from fedlora.preflight import preflight
from fedlora.privacy.dp import build_dp_mode
from fedlora.protocol import (
    ARRAYS,
    AUDIT_NOTES,
    AUDIT_WITHHELD,
    CONFIG,
    CONFIG_KEY,
    DELTA_PREFIX,
    LORA_PREFIX,
    METRICS,
    OUTPUT_DIR,
    RESUME,
)
from fedlora.reports import Timing
from fedlora.rounds import RoundLog, plain_reason
from fedlora.rules import build_rule
from fedlora.runtime import get_runtime
from fedlora.secure_aggregation import SecAggSettings, secure_summary

from .membership import DISCOVERY_TIMEOUT_S, Membership
from .secure_aggregation import EvaluateFn, run_secure_rounds
from .strategy import AccountedFedAvgStrategy, LoraStrategy, to_record
from .wire import CountingGrid

PROJECT_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("fedlora")


def config_from_run_config(run_config: Any) -> ExperimentConfig:
    """``flwr run`` path: ``config`` names a TOML (relative to the app), ``overrides`` adds k=v pairs.

    ``output-dir`` (an absolute path on the SuperLink's host) sets ``run.output_dir``: the ServerApp
    runs in the SuperLink's working directory, where a relative folder would otherwise land."""
    name = str(run_config.get("config", "configs/default.toml"))
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / name
    overrides = [o for o in str(run_config.get("overrides", "")).split() if o]
    output_dir = str(run_config.get(OUTPUT_DIR, ""))
    if output_dir:
        if not Path(output_dir).expanduser().is_absolute():
            raise ConfigError(
                f"run config {OUTPUT_DIR!r} = {output_dir!r} must be an absolute path on the SuperLink's host"
            )
        overrides.append(f"run.output_dir={str(Path(output_dir).expanduser())!r}")
    cfg = load_config(path, overrides)
    if not Path(cfg.run.output_dir).is_absolute():
        logger.warning(
            "run.output_dir = %r is relative: the run folder goes under the SuperLink's working directory %s "
            "(pass --run-config \"%s='/abs/path'\" to choose)",
            cfg.run.output_dir,
            Path.cwd(),
            OUTPUT_DIR,
        )
    return cfg


def resume_from_run_config(run_config: Any) -> Path | None:
    """``flwr run`` of a run to continue: run config ``resume`` names its folder (absolute, on the SuperLink's
    host); the run goes on with that folder's own config, so ``overrides`` must be empty (``config`` and
    ``output-dir`` are not read)."""
    value = str(run_config.get(RESUME, ""))
    if not value:
        return None
    run_dir = Path(value).expanduser()
    if not run_dir.is_absolute():
        raise ConfigError(f"run config {RESUME!r} = {value!r} must be an absolute path on the SuperLink's host")
    if str(run_config.get("overrides", "")).strip():
        raise ConfigError(f"run config {RESUME!r} continues the run as it was configured: 'overrides' must be empty")
    return run_dir


def audit_at_silos(grid: Grid, cfg: ExperimentConfig, view: ModelView, membership: Membership) -> dict[str, Any]:
    """The last message of a per-silo run: every silo online audits the final global model on its own splits.

    A silo that is offline, fails or times out is left out (``silos_reported`` says which answered)."""
    online = membership.refresh().online
    partition_of = {nid: pid for nid, pid in membership.partition_of.items() if pid in online}
    arrays = {LORA_PREFIX + k: v for k, v in (view.lora or {}).items()}
    arrays.update({DELTA_PREFIX + k: v for k, v in (view.deltas or {}).items()})
    config_text = cfg.to_toml()
    messages = [
        Message(
            RecordDict({ARRAYS: to_record(arrays), CONFIG: ConfigRecord({CONFIG_KEY: config_text})}),
            dst_node_id=nid,
            message_type="evaluate",
        )
        for nid in partition_of
    ]
    replies = list(grid.send_and_receive(messages, timeout=cfg.federation.round_timeout_s))
    answered: dict[int, dict[str, Any]] = {}
    notes: dict[int, dict[str, Any]] = {}
    for r in replies:
        if r.has_error():
            logger.warning(
                "silo audit: partition %s failed: %s",
                partition_of.get(r.metadata.src_node_id, "?"),
                plain_reason(str(r.error.reason)),
            )
            continue
        pid = partition_of[r.metadata.src_node_id]
        answered[pid] = dict(r.content.metric_records[METRICS])
        notes[pid] = dict(r.content.config_records.get(AUDIT_NOTES, {}))
    withheld = [pid for pid, m in answered.items() if m.get(AUDIT_WITHHELD)]
    audits = silo_audits({pid: m for pid, m in answered.items() if pid not in withheld}, notes)
    return {
        "silos": {str(p): a for p, a in sorted(audits.items())},
        "silo_audit": summarise_silo_audits(audits, withheld, cfg.federation.num_clients),
    }


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
    # bad data, splits or base model: refused before the run folder exists; a per-silo run's server
    # has no data, so only its base model is checked (each silo checks its own folder at discovery)
    splits = None if uses_silo_data(cfg) else preflight(cfg)
    if splits is None:
        get_runtime(cfg)
    saved = checkpoint.load_server(resume) if resume is not None else None
    outputs = RunOutputs(resume) if resume is not None else RunOutputs.create(cfg)
    if saved is None:
        if splits is not None:
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
    tracker = None if splits is None else LossTracker(cfg, runtime, splits)  # per-silo: no data to track
    membership = Membership(
        cfg.federation.num_clients,
        config_text=cfg.to_toml() if splits is None or client_state else None,
        query_timeout=min(DISCOVERY_TIMEOUT_S, cfg.federation.round_timeout_s),
        warm=client_state,  # simulation: the Ray workers load the model and data now, not in round 1
    )
    discovery_started = time.perf_counter()
    membership.discover(grid, min_clients_present(cfg))
    discovery_s = time.perf_counter() - discovery_started
    counts = membership.counts

    def write_silos() -> None:  # the silos met so far (late joiners added at the end)
        if splits is None:
            outputs.write_json(SILOS_FILE, {"clients": {str(p): c for p, c in sorted(counts.items())}})

    write_silos()
    wire = CountingGrid(grid)
    rule = build_rule(cfg).start(runtime.initial)
    dp = build_dp_mode(cfg)
    log = RoundLog()
    strategy_cls = AccountedFedAvgStrategy if dp.uses_flower_aggregation else LoraStrategy
    strategy = strategy_cls(
        rule=rule,
        log=log,
        partition_of=membership.partition_of,
        fraction=sampled_per_round(cfg) / cfg.federation.num_clients,  # round(n x this) = that count
        seed=cfg.run.seed,
        config_text=cfg.to_toml(),
        max_update_norm=cfg.federation.max_update_norm,
        min_clients=cfg.federation.min_clients_per_round,
        num_clients=cfg.federation.num_clients,
    )
    strategy.membership = membership
    # the run's own id, kept by a resume: a SuperNode's state-dir folder for the run (Flower's run id changes)
    strategy.run_key = str((saved or {}).get("run_key") or uuid.uuid4().hex[:12])
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
        if tracker is not None:
            tracker.reference = saved["tracker_reference"]
        checkpoint.set_rng_state(saved["rng"])
        first_round, elapsed_before = saved["round"] + 1, float(saved["elapsed_s"])
    rule.keep_views_in(outputs.path(VIEWS_DIR))  # the audited clients' views go to disk as they arrive
    progress = tqdm(
        total=cfg.federation.rounds, initial=max(0, first_round - 1), desc=f"{cfg.run.name}: rounds", unit="round"
    )

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        t0 = time.perf_counter()
        strategy.sync_global(arrays)
        losses = tracker(rule.global_view()) if tracker is not None else {}
        entry = log[server_round]
        for key, value in wire.take().items():
            setattr(entry, key, value)
        row = {"round": server_round, **losses, **log.row(server_round), **dp.round_metrics(log, server_round)}
        if server_round == 0 and saved is None:  # discovery's wall time (in simulation: the workers' warm-up)
            row["discovery_s"] = discovery_s
        timings.train_s += row.get("round_s", 0.0)
        outputs.append_metrics(row)
        if server_round > 0:
            progress.update(1)
            if losses:
                progress.set_postfix(member_loss=f"{losses['member_loss']:.4f}", gap=f"{losses['loss_gap']:+.4f}")
        timings.eval_s += time.perf_counter() - t0
        state = {
            "run_key": strategy.run_key,
            "rule": rule.state_dict(),
            "dp": dp.state_dict(),
            "log": log,
            "timings": timings,
            "tracker_reference": None if tracker is None else tracker.reference,
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
        if dp.uniform_weights:
            weights = [1.0]
        elif splits is not None:
            weights = [float(len(c.members)) for c in splits.clients]
        else:  # each silo's member count, as it reported it at discovery
            weights = [float(c.get("member_aux", 0) + c.get("member_test", 0)) for c in counts.values()]
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
    if splits is None:
        t0 = time.perf_counter()
        run_result.privacy = {"global": {}, "clients": {}, **audit_at_silos(grid, cfg, final, membership)}
        write_silos()
        timings.eval_s += time.perf_counter() - t0
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
        if cfg is not None:
            resolved, resume_dir = cfg, resume
        else:
            resume_dir = resume_from_run_config(context.run_config)
            resolved = (
                checkpoint.resume_config(resume_dir) if resume_dir else config_from_run_config(context.run_config)
            )
        # One thread per process like the clients: with more threads than free cores, OpenMP's
        # spin-waiting made a UNet forward ~200x slower on this 2-core machine (measured).
        torch.set_num_threads(resolved.simulation.num_cpus_per_client)
        run_dir, final = run_federated(grid, resolved, resume=resume_dir, client_state=cfg is not None)
        if result_holder is not None:
            result_holder.update(run_dir=run_dir, global_view=final)

    return app


app = create_server_app()
__all__ = ["app", "create_server_app", "ConfigError"]
