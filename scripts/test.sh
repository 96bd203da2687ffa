#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -q "$@"
