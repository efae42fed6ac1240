#!/usr/bin/env bash
# wanflow quick start: create .venv, install torch first, then wanflow, then render the demo clip on the
# embedded default model and log it to the project's MLflow store (mlruns/).
#
#   bash scripts/quickstart.sh
#
# Environment:
#   WANFLOW_TORCH   the pip requirement for torch (default: torch==2.13.0, a CPU build). On a GPU box, bring
#                   your CUDA build, e.g. WANFLOW_TORCH="torch --index-url https://download.pytorch.org/whl/cu128",
#                   or install torch into .venv yourself first: an importable torch is kept.
#   PYTHON          the interpreter that creates .venv (default: python3; needs >= 3.10).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
"$PY" -m pip install -q --upgrade pip

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "== installing ${WANFLOW_TORCH:-torch==2.13.0}"
  # shellcheck disable=SC2086  # WANFLOW_TORCH may carry pip options such as --index-url
  "$PY" -m pip install -q ${WANFLOW_TORCH:-torch==2.13.0}
fi
echo "== installing wanflow with notebooks and test extras"
"$PY" -m pip install -q -e ".[notebooks,test]"

if [ -d .git ]; then  # keep notebook outputs out of commits (see README "Notebooks")
  .venv/bin/nbstripout --install --attributes .gitattributes
fi

echo "== rendering the demo clip"
.venv/bin/wanflow render "a red circle moving left on a blue background" --seed 0
echo
echo "Next: .venv/bin/wanflow history   |   .venv/bin/wanflow ui   (then open the printed link)"
