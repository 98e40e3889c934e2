#!/usr/bin/env bash
# Lint, format check and type check (ruff + mypy, configured in pyproject.toml); run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check fedlora server clients scripts tests
.venv/bin/ruff format --check fedlora server clients scripts tests
.venv/bin/mypy
