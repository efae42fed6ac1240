#!/usr/bin/env bash
# Run the test suite (offline, CPU). Needs .venv from scripts/quickstart.sh. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
