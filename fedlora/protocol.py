"""Keys shared by the ServerApp and ClientApp messages (one place, no scattered strings)."""

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
