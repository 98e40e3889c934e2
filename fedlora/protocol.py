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


def number(record: Mapping[str, Any], key: str) -> float:
    """A scalar from a Flower Metric/ConfigRecord (their values may also be lists, bytes or strings)."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"record entry {key!r} must be a number, got {value!r}")
    return float(value)


def integer(record: Mapping[str, Any], key: str) -> int:
    return int(number(record, key))
