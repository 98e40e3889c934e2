#!/usr/bin/env bash
# Quickstart: set up (if needed) and run the default federated experiment -> runs/default/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_ADDRESS="${RAY_ADDRESS:-local}" FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1
exec .venv/bin/fedlora run "${1:-configs/default.toml}" "${@:2}"
