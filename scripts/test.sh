#!/usr/bin/env bash
# Run the test suite (offline, CPU). Needs .venv from scripts/quickstart.sh. Extra arguments go to pytest.
# SkyPilot (the rented-GPU launcher) pins an older click than mlflow, so the test that parses
# pipelines/*.sky.yaml with SkyPilot itself uses its own .venv-sky, made here on first use (~1 min).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-sky/bin/sky ]; then
  echo "== creating .venv-sky (SkyPilot, for the task-file test)"
  python3 -m venv .venv-sky
  .venv-sky/bin/python -m pip install -q "skypilot>=0.10" pyyaml
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANFLOW_SKY_PYTHON="$PWD/.venv-sky/bin/python"
exec .venv/bin/python -m pytest -q "$@"
