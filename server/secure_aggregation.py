"""Rounds under secure aggregation: Flower's SecAgg+ workflow, driven once per round by the ServerApp.

Flower 1.42 runs SecAgg+ only through its legacy strategy interface (``SecAggPlusWorkflow``
over a ``LegacyContext``). ``SecureRound`` is the small object that offers the workflow
``configure_fit`` and ``aggregate_fit`` for one round: it sends each sampled client its payload
and hands the decoded aggregate (the weighted mean of the uploads, never one of them) to the
rule. Sampling, logging and evaluation are the plain path's (``LoraStrategy``, ``RoundLog``).
The oracle (``federation.secagg_oracle``, simulation only) fetches each survivor's plain upload
outside the protocol, to measure the decoding error and to audit the clients.

The server cannot check any one upload here (it never sees one), so each client checks its own
before masking it (``clients.app.secure_train``: the keys the server expects, finite values);
the server checks what it can: a round with fewer contributors than
``federation.min_clients_per_round``, or whose decoded aggregate is not finite, is skipped, and a
round in which every sampled client failed stops the run.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerConfig
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedlora.config import ExperimentConfig
from fedlora.local_training import round_seed
from fedlora.privacy.dp import DpMode
from fedlora.protocol import (
    ARRAYS,
    CONFIG,
    EVAL_ONLY_PREFIX,
    METRICS,
    NUM_EXAMPLES,
    ORACLE,
    PARTITION_ID,
    PAYLOAD_KEYS,
    SECAGG_CLIPPED,
    SECAGG_MAX_WEIGHT,
    UPLOAD_KEYS,
    integer,
)
from fedlora.secure_aggregation import SecAggSettings

from .strategy import LoraStrategy, record_bytes, to_numpy, to_record
from .wire import CountingGrid

logger = logging.getLogger("fedlora")
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord]


def _reason(error: Any) -> str:
    inner = error.args[0] if isinstance(error, Exception) and error.args else error
    return str(getattr(inner, "reason", inner))


class SecureRound:
    """The legacy-strategy face ``SecAggPlusWorkflow`` drives for one round."""

    def __init__(self, strategy: LoraStrategy, dp: DpMode, settings: SecAggSettings, grid: Grid):
        self.strategy, self.dp, self.settings, self.grid = strategy, dp, settings, grid
        self.rule, self.log = strategy.rule, strategy.log
        self.upload_keys = self.rule.upload_keys()
        self.run_id = int(getattr(grid.run, "run_id", 0) or 0)
        self.released: dict[int, dict[str, np.ndarray]] = {}  # round -> the decoded mean before DP noise
        self.contributors: dict[int, tuple[list[int], list[float]]] = {}  # round -> (partition ids, weights)

    # ---- what the workflow calls --------------------------------------------------------

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        pids = self.strategy.sample_partitions(server_round, self.strategy.available_partitions(server_round))
        config: dict[str, Scalar] = {
            **self.strategy.round_config(server_round),
            UPLOAD_KEYS: "\n".join(self.upload_keys),
            SECAGG_MAX_WEIGHT: self.settings.max_weight,
        }
        out, down = [], []
        for pid in pids:
            payload = self.rule.payload(pid)
            self.rule.mark_sent(pid)
            down.append(record_bytes(to_record(payload)))
            fitins = FitIns(
                ndarrays_to_parameters([np.ascontiguousarray(v) for v in payload.values()]),
                {**config, PAYLOAD_KEYS: "\n".join(payload)},
            )
            out.append((GridClientProxy(self.strategy.node_of[pid], self.grid, self.run_id), fitins))
        entry = self.log[server_round]
        entry.sampled, entry.bytes_down_per_client = pids, float(np.mean(down)) if down else None
        return out

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, FitRes]], failures: list) -> tuple:
        if not results:
            return None, {}
        results = sorted(results, key=lambda r: int(r[1].metrics[PARTITION_ID]))
        pids = [int(res.metrics[PARTITION_ID]) for _, res in results]
        weights = [float(res.num_examples) for _, res in results]
        # every result carries the same decoded mean (the workflow puts it into each FitRes)
        decoded = parameters_to_ndarrays(results[0][1].parameters)
        if len(decoded) != len(self.upload_keys):
            raise RuntimeError(f"SecAgg+ decoded {len(decoded)} arrays; the rule uploads {len(self.upload_keys)}")
        mean = {k: np.asarray(v, dtype=np.float32) for k, v in zip(self.upload_keys, decoded)}
        entry = self.log[server_round]
        bad = [k for k, v in mean.items() if not np.all(np.isfinite(v))]
        min_clients = self.strategy.min_clients
        if bad or len(pids) < min_clients:
            entry.skipped = (
                f"non-finite aggregate: the decoded mean holds NaN or infinite values in {bad[:3]}"
                if bad
                else f"too few contributors: {len(pids)} clients' updates are in the decoded mean, fewer than "
                f"federation.min_clients_per_round = {min_clients}"
            ) + "; the global model is unchanged"
            logger.warning("round %d skipped: %s", server_round, entry.skipped)
            return None, {}
        self.released[server_round] = mean
        self.contributors[server_round] = (pids, weights)
        self.rule.fold_mean(self.dp.noise_secure_mean(mean, len(pids), server_round))
        entry.clients = {
            str(pid): {k: v for k, v in res.metrics.items() if k != PARTITION_ID} | {NUM_EXAMPLES: res.num_examples}
            for pid, (_, res) in zip(pids, results)
        }
        entry.bytes_up_per_client = 8.0 * (1 + sum(int(np.size(v)) for v in mean.values()))  # int64 masked
        entry.secagg_clipped_values = int(sum(int(res.metrics.get(SECAGG_CLIPPED, 0)) for _, res in results))
        entry.secagg_error_bound = self.settings.error_bound(weights)
        if entry.secagg_clipped_values:
            logger.warning(
                "round %d: SecAgg+ clipped %d uploaded values to +-%g (federation.secagg_clipping_range)",
                server_round,
                entry.secagg_clipped_values,
                self.settings.clipping_range,
            )
        return Parameters([], ""), {}


def oracle_uploads(grid: Grid, node_of: dict[int, int], pids: list[int]) -> tuple[dict, dict]:
    """Each client's plain last upload and audit-only arrays, fetched outside the protocol (simulation)."""
    queries = [
        Message(RecordDict({CONFIG: ConfigRecord({ORACLE: True})}), dst_node_id=node_of[p], message_type="query")
        for p in pids
    ]
    uploads, eval_only = {}, {}
    for reply in grid.send_and_receive(queries):
        if reply.has_error():
            continue
        pid = integer(reply.content.metric_records[METRICS], PARTITION_ID)
        arrays = to_numpy(reply.content.array_records[ARRAYS])
        uploads[pid] = {k: v for k, v in arrays.items() if not k.startswith(EVAL_ONLY_PREFIX)}
        eval_only[pid] = {k[len(EVAL_ONLY_PREFIX) :]: v for k, v in arrays.items() if k.startswith(EVAL_ONLY_PREFIX)}
    return uploads, eval_only


def weighted_mean64(uploads: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    return {k: sum(wi * np.asarray(u[k], dtype=np.float64) for wi, u in zip(w, uploads)) for k in uploads[0]}


def run_secure_rounds(
    grid: Grid,
    cfg: ExperimentConfig,
    strategy: LoraStrategy,
    dp: DpMode,
    settings: SecAggSettings,
    evaluate: EvaluateFn,
    wire: CountingGrid,
    first_round: int = 0,
) -> None:
    """Round 0's evaluation, then per round: one SecAgg+ workflow, the oracle if asked, the evaluation.

    ``first_round`` > 0 continues a resumed run (rounds before it are done)."""
    rule, log = strategy.rule, strategy.log
    face = SecureRound(strategy, dp, settings, wire)
    if first_round == 0:
        evaluate(0, to_record(rule.carried()))
    for server_round in range(max(1, first_round), cfg.federation.rounds + 1):
        state = RecordDict(
            {
                MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
                MAIN_PARAMS_RECORD: ArrayRecord(),
            }
        )
        context = LegacyContext(
            Context(run_id=face.run_id, node_id=0, node_config={}, state=state, run_config={}),
            ServerConfig(num_rounds=cfg.federation.rounds),
            strategy=face,  # type: ignore[arg-type]  # the workflow needs only configure_fit/aggregate_fit
        )
        workflow = SecAggPlusWorkflow(
            settings.num_shares,
            settings.reconstruction_threshold,
            max_weight=settings.max_weight,
            clipping_range=settings.clipping_range,
            quantization_range=settings.quantization_range,
            modulus_range=settings.modulus_range,
            timeout=cfg.federation.round_timeout_s,
        )
        saved = random.getstate()
        random.seed(round_seed(cfg.run.seed, server_round, 13))  # Flower shuffles the neighbour ring with it
        wire.errors.clear()
        t0 = time.perf_counter()
        try:
            workflow(wire, context)
        finally:
            random.setstate(saved)
        entry = log[server_round]
        entry.round_s = time.perf_counter() - t0
        entry.failures = [
            f"partition {strategy.partition_of.get(nid, '?')}: {reason}" for nid, reason in sorted(wire.errors.items())
        ]
        sampled = entry.sampled or []
        if server_round in face.contributors:
            pids, weights = face.contributors[server_round]
            entry.secagg_dropped = [p for p in sampled if p not in pids]
            if cfg.federation.secagg_oracle:
                uploads, eval_only = oracle_uploads(grid, strategy.node_of, pids)
                if sorted(uploads) == pids:
                    exact = weighted_mean64([uploads[p] for p in pids], weights)
                    released = face.released[server_round]
                    entry.secagg_max_abs_error = float(
                        max(np.max(np.abs(released[k].astype(np.float64) - exact[k])) for k in exact)
                    )
                    rule.record_views(pids, uploads, weights, eval_only)
        else:
            if not entry.skipped:
                entry.skipped = (
                    f"SecAgg+ halted: fewer clients answered than the reconstruction threshold needs "
                    f"({len(wire.errors)} of {len(sampled)} failed); the global model is unchanged"
                )
                logger.warning("round %d skipped: %s", server_round, entry.skipped)
            entry.secagg_dropped = sorted(p for p in sampled if strategy.node_of[p] in wire.errors)
        for line in entry.failures:
            logger.warning("round %d: failed reply, %s", server_round, line)
        evaluate(server_round, to_record(rule.carried()))
        if sampled and all(strategy.node_of[p] in wire.errors for p in sampled):
            raise RuntimeError(
                f"round {server_round}: every one of the {len(sampled)} sampled clients failed, so the run stops "
                f"here instead of running the remaining rounds; first reasons: {'; '.join(entry.failures[:3])}"
            )
