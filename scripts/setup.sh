#!/usr/bin/env bash
# Creates the project-local virtual environment .venv when missing and installs what fedlora
# needs: the CPU build of torch 2.13.0 FIRST (any other torch request pulls GBs of CUDA
# packages), then the project itself with its test extras. Safe to run again: it only
# reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU build)"
  "${PIP[@]}" install --upgrade pip 2>&1 | grep -v "is ignored" || true
  "${PIP[@]}" install torch==2.13.0 2>&1 | grep -v "is ignored" || true
fi
stamp=.venv/.fedlora-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing fedlora and its dependencies"
  "${PIP[@]}" install -e ".[test]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import fedlora, flwr, diffusers, peft, torch; assert torch.version.cuda is None, 'a CUDA torch was installed'"
  touch "$stamp"
fi
# Headless Chromium renders report.html in the tests (tests/test_html_report.py); Debian's package,
# installed only where we may (root + apt), else those tests skip with the reason.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing chromium (Debian package) for the HTML report check"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "[setup] chromium not installed; HTML render tests will skip"
fi
