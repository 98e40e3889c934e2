#!/usr/bin/env bash
# Quickstart: set up (if needed) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q --durations=25 "$@"  # the slowest tests, to keep the suite in budget
