#!/usr/bin/env bash
# Set up .venv with MetamerGen and its test tools. Safe to re-run.
#
# torch: if .venv already has a torch (e.g. a CUDA build you installed), it is kept. Otherwise
# TORCH_SPEC is installed, by default the CPU build torch==2.13.0 (on this project's development
# and CI machines it lies on local disk; elsewhere pip downloads it). On a GPU machine, install
# your CUDA build of torch into .venv first (or set TORCH_SPEC) and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
    .venv/bin/python -m pip install --quiet $TORCH_SPEC
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import metamergen, torch; print(f'metamergen {metamergen.__version__} ready (torch {torch.__version__})')"
