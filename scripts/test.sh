#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. This is what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The HTML report is tested in a real headless browser: Debian's chromium.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "test.sh: chromium is missing; install Debian's chromium package (sudo apt-get install chromium)" >&2
  fi
fi
# The PostgreSQL catalog is tested against a real server (tests/pgserver.py): Debian's postgresql
# binaries (initdb, pg_ctl, postgres under /usr/lib/postgresql/N/bin), run as user mlc-pg when root.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null
  else
    echo "test.sh: PostgreSQL is missing; install Debian's postgresql package (sudo apt-get install postgresql)" >&2
  fi
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -q "$@"
