"""Keys shared by the ServerApp and ClientApp messages (one place, no scattered strings), and typed reads."""

from collections.abc import Mapping
from typing import Any

CONFIG_KEY = "fedlora-config"  # the resolved experiment config (TOML text) in every train message
PARTITION_ID = "partition-id"  # node_config key (simulation: automatic; deployment: --node-config)
NUM_EXAMPLES = "num-examples"
ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
OBJECTIVE_STATE = "objective-state"
CLIENT_STATE = "client-state"
EVAL_ONLY_PREFIX = "eval-only/"  # keys of arrays sent for the audit only (FedSA-LoRA B); never aggregated
RULE_STATE = "rule-state"  # what the aggregation rule keeps on a client (FedSA B, FLoRA merged update)
DP_STATE = "dp-state"  # a client's DP-SGD accountant history
# Secure aggregation (SecAgg+ sends arrays by position, in Flower's legacy FitIns/FitRes)
PAYLOAD_KEYS = "fedlora-payload-keys"  # the names of the arrays sent down, newline-separated
UPLOAD_KEYS = "fedlora-upload-keys"  # the names, in order, of the arrays a client must send up
SECAGG_MAX_WEIGHT = "fedlora-secagg-max-weight"  # the weight that maps to ratio 1 (for the clip count)
SECAGG_CLIPPED = "secagg_clipped"  # reply metric: how many of the client's values the quantizer clips
ORACLE = "fedlora-oracle"  # query flag: return the last plain upload (simulation's oracle only)
ORACLE_STATE = "oracle-upload"  # where a client keeps that upload
WARM = "fedlora-warm"  # query flag (simulation): load the model and the dataset now, before round 1
PLACEMENT = "placement"  # reply ConfigRecord: where the client ran (its Ray node id under simulation)
RAY_NODE_ID = "ray-node-id"
PROCESS_AGE = "process_s"  # a train reply: seconds since the ClientApp process started (where known)
STATE_DIR = "fedlora-state-dir"  # simulation: where clients save their persistent state for a resume
# Per-silo data (deployment, data.dataset = "silo"): node_config keys each SuperNode is started with
DATA_PATH = "data-path"  # the silo's image folder (metadata.jsonl or .txt captions)
SILO_MEMBERS = "members"  # how many of its images the silo trains on (default: data.members_per_client)
SILO_NONMEMBERS = "nonmembers"  # how many it holds out for the audit (default: data.nonmembers_per_client)
SILO_SPLIT_SEED = "split-seed"  # the seed of its local split (default: from run.seed and partition id)
SILO_ON_BAD_IMAGE = "on-bad-image"  # "error" or "skip" (default: data.on_bad_image)
SILO_NODE_KEYS = (DATA_PATH, SILO_MEMBERS, SILO_NONMEMBERS, SILO_SPLIT_SEED, SILO_ON_BAD_IMAGE)
# node_config (deployment): where a SuperNode keeps each run's client state on disk (proxy attacker, rule
# state, DP accountant), so that a restarted SuperNode continues with it; <state-dir>/run-<RUN_KEY>/
NODE_STATE_DIR = "state-dir"
# node_config (deployment): the Unix socket of this silo's long-lived worker (``clients.worker``), which runs the
# ClientApp's bodies with the model, the data and their encodings kept between rounds; unset: in each ClientApp process
NODE_WORKER = "worker"
SILO_COUNT_PREFIX = "silo-"  # query reply metrics: the silo's split sizes (all the server learns of its data)
AUDIT_PREFIX = "audit/"  # evaluate reply metrics: "audit/<attack>/<metric>", a silo's audit of the global model
AUDIT_NOTES = "audit-notes"  # evaluate reply ConfigRecord: "<attack>/<metric>" -> why it is not measurable
AUDIT_WITHHELD = "audit-withheld"  # evaluate reply metric: 1 when the silo's DP mode keeps its audit metrics in
LORA_PREFIX = "lora/"  # evaluate message arrays: the global model's adapter ...
DELTA_PREFIX = "delta/"  # ... and its dense deltas (rules whose global model is no rank-r LoRA)
OUTPUT_DIR = "output-dir"  # run config (flwr run --run-config): where the run folder goes, absolute
RESUME = "resume"  # run config: a run folder (absolute, on the SuperLink's host) to continue from its checkpoint
# train message config: the run's own id, kept by a resumed run (Flower gives that a new run id), so that a
# SuperNode's state-dir folder for the run, <state-dir>/run-<key>/, is found again
RUN_KEY = "fedlora-run-key"


def number(record: Mapping[str, Any], key: str) -> float:
    """A scalar from a Flower Metric/ConfigRecord (their values may also be lists, bytes or strings)."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"record entry {key!r} must be a number, got {value!r}")
    return float(value)


def integer(record: Mapping[str, Any], key: str) -> int:
    return int(number(record, key))
