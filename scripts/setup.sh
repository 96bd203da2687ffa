#!/usr/bin/env bash
# Create .venv and install mlc-pipeline with its pinned dependencies (about 4 minutes on a fresh
# machine: torch comes from this machine's local wheel store through pip; don't use uv/poetry here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test${EXTRAS:+,$EXTRAS}]"
echo "setup: ok ($(.venv/bin/python -c 'import torch, fastai, prefect; print("torch", torch.__version__, "fastai", fastai.__version__, "prefect", prefect.__version__)'))"
