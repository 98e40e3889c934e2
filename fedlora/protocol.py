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
PLACEMENT = "placement"  # reply ConfigRecord: where the client ran (its Ray node id under simulation)
RAY_NODE_ID = "ray-node-id"
STATE_DIR = "fedlora-state-dir"  # simulation: where clients save their persistent state for a resume


def number(record: Mapping[str, Any], key: str) -> float:
    """A scalar from a Flower Metric/ConfigRecord (their values may also be lists, bytes or strings)."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"record entry {key!r} must be a number, got {value!r}")
    return float(value)


def integer(record: Mapping[str, Any], key: str) -> int:
    return int(number(record, key))
