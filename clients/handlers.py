"""What a fedlora client does with each message, apart from Flower's plumbing: each body takes a message's
content and the node's context and returns the reply's content. ``clients.app`` wraps them in Flower's
handlers; ``clients.worker`` runs the same bodies in a long-lived process on the silo.

The experiment config arrives in every train message, so a client needs nothing but its
partition id (simulation: automatic; deployment: ``--node-config "partition-id=K"``). With
``data.dataset = "silo"`` (deployment) it also reads its own image folder from its node config
(``data-path``, ``fedlora.data.silo``), tells the server only its split sizes, and audits the
final global model on its own splits (``evaluate``), replying with metrics only.
Per-client state that must outlive a round (the objective's proxy attacker, the rule's kept
factors, the DP accountant) lives in ``context.state`` in a deployment; in simulation it lives in
one file per client under the run folder, read when the client is sampled and written back after
its round, so that the simulation's memory does not grow with the number of clients. Records are
converted to arrays once, here, on the way in and on the way out.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from fedlora import checkpoint
from fedlora.config import ConfigError, ExperimentConfig, loads_config
from fedlora.data import SiloData, load_dataset, load_silo, uses_silo_data
from fedlora.evaluation.membership import attack_sets
from fedlora.evaluation.silo import audit_silo
from fedlora.faults import maybe_fail, maybe_poison
from fedlora.local_training import ClientRoundResult, client_round, round_seed
from fedlora.models.lora import ModelView
from fedlora.placement import ray_node_id
from fedlora.privacy.dp import build_dp_mode
from fedlora.privacy.objectives import objective_class
from fedlora.protocol import (
    ARRAYS,
    AUDIT_NOTES,
    CLIENT_STATE,
    CONFIG,
    CONFIG_KEY,
    DELTA_PREFIX,
    DP_STATE,
    EVAL_ONLY_PREFIX,
    LORA_PREFIX,
    METRICS,
    NODE_STATE_DIR,
    NUM_EXAMPLES,
    OBJECTIVE_STATE,
    ORACLE,
    ORACLE_STATE,
    PARTITION_ID,
    PAYLOAD_KEYS,
    PLACEMENT,
    RAY_NODE_ID,
    RULE_STATE,
    RUN_KEY,
    SECAGG_CLIPPED,
    SECAGG_MAX_WEIGHT,
    STATE_DIR,
    UPLOAD_KEYS,
    WARM,
    integer,
)
from fedlora.rules import client_rank
from fedlora.runtime import get_runtime, get_splits
from fedlora.secure_aggregation import SecAggSettings


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def record_of(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def partition_id(context: Context) -> int:
    if PARTITION_ID not in context.node_config:
        raise KeyError(
            f'node_config has no {PARTITION_ID!r}; start the SuperNode with --node-config "{PARTITION_ID}=K"'
        )
    return int(context.node_config[PARTITION_ID])


def silo_of(cfg: ExperimentConfig, context: Context) -> SiloData | None:
    """This node's own data when the run uses per-silo data (its node config names the folder)."""
    return load_silo(context.node_config, cfg) if uses_silo_data(cfg) else None


def query(content: RecordDict, context: Context) -> RecordDict:
    """The partition id (and, for a per-silo run, the split sizes: all the server learns of the data);
    with the oracle flag (simulation only), also the last plain upload."""
    metrics = MetricRecord({PARTITION_ID: partition_id(context)})
    config = content.config_records.get(CONFIG)
    if config is not None and CONFIG_KEY in config:
        cfg = config_of(str(config[CONFIG_KEY]))
        silo = silo_of(cfg, context)  # a bad data-path fails discovery
        if silo is not None:
            metrics.update(silo.counts())
        if config.get(WARM):
            warm_shared(cfg, context)
    if config is not None and config.get(ORACLE) and ORACLE_STATE in context.state:
        return RecordDict({ARRAYS: context.state.array_records[ORACLE_STATE], METRICS: metrics})
    return RecordDict({METRICS: metrics})


@lru_cache(maxsize=4)
def config_of(text: str) -> ExperimentConfig:
    """The config of a query's TOML text, parsed once per process (discovery sends it to every node)."""
    return loads_config(text)


def warm_shared(cfg: ExperimentConfig, context: Context) -> None:
    """Load what every client of this process shares (the model at this client's rank, the dataset, the
    splits) while discovery runs, so that round 1 costs what later rounds do.

    Simulation only (the server sets ``WARM``): its Ray workers outlive a message, and load these once
    each, so all but a worker's first query return at once. Per-client work (encoding its members, its
    aux and test sets) stays in the client's first round: which clients a worker will train is not known."""
    torch.set_num_threads(cfg.simulation.num_cpus_per_client)
    get_runtime(cfg, client_rank(cfg, partition_id(context)))
    if not uses_silo_data(cfg):
        load_dataset(cfg.data)
        get_splits(cfg)


def warm(content: RecordDict, context: Context) -> None:
    """Load what this silo's rounds need (the model, its encoded members and aux/test sets) before the first one.

    A long-lived worker runs it with discovery's query, before its reply, so that round 1 costs what later rounds do;
    in a per-message ClientApp process it would be wasted (the process ends), so only the worker calls it."""
    config = content.config_records.get(CONFIG)
    if config is None or CONFIG_KEY not in config:
        return
    cfg = config_of(str(config[CONFIG_KEY]))
    silo = silo_of(cfg, context)
    if silo is None:
        return
    warm_shared(cfg, context)
    runtime = get_runtime(cfg, client_rank(cfg, partition_id(context)))
    runtime.encode(silo.dataset, silo.splits.clients[0].members)
    if objective_class(cfg.train.method).needs_aux:
        attack_sets(runtime, silo.dataset, silo.splits, [0])


def train(content: RecordDict, context: Context) -> RecordDict:
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in content.config_records:  # SecAgg+'s masked-vector stage
        return secure_train(content, context)
    config = content.config_records[CONFIG]
    cfg = loads_config(str(config[CONFIG_KEY]))
    pid, server_round = partition_id(context), integer(config, "server-round")
    payload = arrays_of(content.array_records[ARRAYS])
    result, metrics = train_locally(cfg, pid, payload, server_round, context, state_dir_of(config, context))
    maybe_fail(cfg.simulation.fail_clients, pid, server_round)
    result.upload = maybe_poison(cfg.simulation.nan_clients, pid, server_round, result.upload)
    # Flower expects one ArrayRecord per reply: audit-only arrays ride along under a key prefix
    arrays = {**result.upload, **{EVAL_ONLY_PREFIX + k: v for k, v in result.eval_only.items()}}
    reply = RecordDict({ARRAYS: record_of(arrays), METRICS: MetricRecord(metrics)})
    node = ray_node_id()
    if node is not None:  # which machine of a Ray cluster trained it (member-independent)
        reply[PLACEMENT] = ConfigRecord({RAY_NODE_ID: node})
    return reply


def secure_train(content: RecordDict, context: Context) -> RecordDict:
    """The train step inside SecAgg+: legacy FitIns in, legacy FitRes out (the mod masks its arrays).

    The server cannot validate an upload it never sees: the client checks its own (the keys the
    server expects, finite values) and fails the round rather than corrupt the masked sum.

        Flower's quantizer rounds stochastically with numpy's global generator, so it is seeded
        here from (run seed, client, round): same config, same decoded aggregate.
    """
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    config = fitins.config
    cfg = loads_config(str(config[CONFIG_KEY]))
    pid, server_round = partition_id(context), int(config["server-round"])
    payload = dict(zip(str(config[PAYLOAD_KEYS]).split("\n"), parameters_to_ndarrays(fitins.parameters)))
    result, metrics = train_locally(cfg, pid, payload, server_round, context, state_dir_of(config, context))
    maybe_fail(cfg.simulation.fail_clients, pid, server_round)
    dp = build_dp_mode(cfg)
    upload = dp.secure_upload(result.upload, payload)
    keys = str(config[UPLOAD_KEYS]).split("\n")
    if set(keys) != set(upload):
        differ = sorted(set(keys) ^ set(upload))[:3]
        raise KeyError(f"this client's upload and the server's expected keys differ in {differ} ...")
    # the server sees only the masked sum, so this client is the one that can refuse a non-finite upload
    bad = [k for k in keys if not np.all(np.isfinite(upload[k]))]
    if bad:
        raise ValueError(f"this client's upload holds NaN or infinite values in {bad[:3]}; it is not sent")
    weight = 1 if dp.uniform_weights else result.stats.num_examples
    settings = SecAggSettings.from_config(cfg, float(config[SECAGG_MAX_WEIGHT]))
    metrics[SECAGG_CLIPPED] = settings.clipped_values(upload, weight)
    if cfg.federation.secagg_oracle:
        audit = {**upload, **{EVAL_ONLY_PREFIX + k: v for k, v in result.eval_only.items()}}
        context.state[ORACLE_STATE] = record_of(audit)
    np.random.seed(round_seed(cfg.run.seed, pid, server_round, 9) % 2**32)
    fitres = FitRes(
        Status(Code.OK, "trained"),
        ndarrays_to_parameters([np.ascontiguousarray(upload[k]) for k in keys]),
        int(weight),
        metrics,
    )
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def evaluate(content: RecordDict, context: Context) -> RecordDict:
    """A per-silo run's audit: attack the global model sent here on this silo's own splits, reply metrics only."""
    cfg = loads_config(str(content.config_records[CONFIG][CONFIG_KEY]))
    silo = silo_of(cfg, context)
    if silo is None:
        raise ValueError(f"an audit request for a run whose data.dataset = {cfg.data.dataset!r}; only 'silo' runs ask")
    torch.set_num_threads(cfg.simulation.num_cpus_per_client)
    arrays = arrays_of(content.array_records[ARRAYS])
    lora = {k[len(LORA_PREFIX) :]: v for k, v in arrays.items() if k.startswith(LORA_PREFIX)}
    deltas = {k[len(DELTA_PREFIX) :]: v for k, v in arrays.items() if k.startswith(DELTA_PREFIX)}
    view = ModelView(lora=lora or None, deltas=deltas or None)
    pid = partition_id(context)
    audit, notes = audit_silo(cfg, get_runtime(cfg), silo, view, pid)
    metrics: dict[str, Any] = {PARTITION_ID: pid, **silo.counts(), **audit}
    return RecordDict({METRICS: MetricRecord(metrics), AUDIT_NOTES: ConfigRecord(dict(notes.items()))})


def state_dir_of(config: Any, context: Context) -> str | None:
    """Where this client's persistent state goes on disk: the server's checkpoint folder (simulation, for a
    resume), else this SuperNode's node-config ``state-dir``, one folder per run (a restarted SuperNode
    continues with it; named by the server's run key, which a resumed run keeps, else by Flower's run
    id), else nowhere (the state lives in ``context.state`` only)."""
    if config.get(STATE_DIR):
        return str(config[STATE_DIR])
    if NODE_STATE_DIR not in context.node_config:
        return None
    folder = context.node_config[NODE_STATE_DIR]
    if not isinstance(folder, str) or not folder:
        raise ConfigError(
            f'node_config {NODE_STATE_DIR!r} must be a folder path ({NODE_STATE_DIR}="..."), got {folder!r}'
        )
    run = str(config[RUN_KEY]) if config.get(RUN_KEY) else str(context.run_id)
    if not run.replace("-", "").isalnum():
        raise ValueError(f"the server's {RUN_KEY!r} = {run!r} is no folder name (letters, digits and '-' only)")
    return str(Path(folder).expanduser() / f"run-{run}")


PERSISTENT = (OBJECTIVE_STATE, RULE_STATE, DP_STATE)  # array records that outlive a round; CLIENT_STATE: counts


def save_state(state: RecordDict, state_dir: str, pid: int, server_round: int) -> None:
    arrays = {key: arrays_of(state.array_records[key]) for key in PERSISTENT if key in state}
    counts = dict(state.metric_records[CLIENT_STATE]) if CLIENT_STATE in state else {}
    checkpoint.save_client(Path(state_dir), pid, server_round, {"arrays": arrays, "counts": counts})


def restore_state(state: RecordDict, state_dir: str, pid: int, server_round: int) -> None:
    """A resumed run's client starts empty: take what it saved after its last round before this one."""
    saved = checkpoint.load_client(Path(state_dir), pid, server_round)
    if saved is None:
        return
    for key, arrays in saved["arrays"].items():
        state[key] = record_of(arrays)
    if saved["counts"]:
        state[CLIENT_STATE] = MetricRecord({k: int(v) for k, v in saved["counts"].items()})


def train_locally(
    cfg: ExperimentConfig,
    pid: int,
    payload: dict[str, np.ndarray],
    server_round: int,
    context: Context,
    state_dir: Any = None,
) -> tuple[ClientRoundResult, dict[str, Any]]:
    """One local round with this client's persistent state; the result and its reply metrics.

    ``state_dir`` (``state_dir_of``: the run folder's in simulation, the node config's ``state-dir`` on a
    SuperNode): where the state lives between rounds. It is read before the round (a resumed run's, a
    restarted SuperNode's too), written after it and dropped from ``context.state``, which Flower's
    simulation keeps in memory for every client it has seen."""
    torch.set_num_threads(cfg.simulation.num_cpus_per_client)
    state = context.state
    if state_dir:
        for key in (*PERSISTENT, CLIENT_STATE):  # the file is the truth; nothing stale stays in memory
            if key in state:
                del state[key]
        restore_state(state, str(state_dir), pid, server_round)

    def tensors(key: str) -> dict[str, torch.Tensor] | None:
        return state.array_records[key].to_torch_state_dict() if key in state else None

    result = client_round(
        cfg,
        pid,
        payload,
        server_round,
        objective_state=tensors(OBJECTIVE_STATE),
        kept=arrays_of(state.array_records[RULE_STATE]) if RULE_STATE in state else None,
        dp_state=tensors(DP_STATE),
        silo=silo_of(cfg, context),
    )
    if result.objective_state:
        state[OBJECTIVE_STATE] = ArrayRecord(result.objective_state)
    if result.kept:
        state[RULE_STATE] = record_of(result.kept)
    if result.dp_state:
        state[DP_STATE] = ArrayRecord(result.dp_state)
    rounds_trained = integer(state.metric_records[CLIENT_STATE], "rounds-trained") if CLIENT_STATE in state else 0
    state[CLIENT_STATE] = MetricRecord({"rounds-trained": rounds_trained + 1, "last-round": server_round})
    if state_dir:
        save_state(state, str(state_dir), pid, server_round)
        for key in (*PERSISTENT, CLIENT_STATE):
            if key in state:
                del state[key]
    metrics: dict[str, Any] = {
        NUM_EXAMPLES: result.stats.num_examples,
        PARTITION_ID: pid,
        "rounds_trained": rounds_trained + 1,
        **result.metrics,
    }
    return result, metrics
