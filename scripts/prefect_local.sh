#!/usr/bin/env bash
# Bring mlc-pipeline's orchestration up on this machine, after `bash scripts/setup.sh`:
#   1. a Prefect server on 127.0.0.1:$MLC_PREFECT_PORT (default 4200), its SQLite database in
#      $PREFECT_HOME (default .prefect/ in the project, git-ignored),
#   2. the process work pool `mlc-local` and the global concurrency limit `mlc-flickr` (1 collect at a time),
#   3. the deployments of prefect.yaml (`prefect --no-prompt deploy --all`),
#   4. a worker on the pool,
#   5. a first run of collect-and-train/nightly, watched until it ends;
# then it stays up so the nightly schedule (02:00 UTC) runs, until Ctrl-C, and stops the worker, then
# the server. See docs/orchestration.md.
#
# Usage: bash scripts/prefect_local.sh [--once] [--no-run] [--params JSON]
#   --once         stop everything after the first run; exit with the run's status
#   --no-run       no first run (just bring everything up)
#   --params JSON  parameters of the first run, e.g. '{"config_path": "configs/offline.yaml",
#                  "overrides": {"train": {"epochs": 2}}}' (default: the deployment's)
# Environment: MLC_PREFECT_PORT, PREFECT_HOME, MLC_PREFECT_UI=0 (no UI), MLC_WATCH_TIMEOUT (s, 21600).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ONCE=0 RUN=1 PARAMS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --once) ONCE=1 ;;
    --no-run) RUN=0 ;;
    --params) PARAMS=${2:?--params needs a JSON mapping}; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "prefect_local: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PREFECT=$ROOT/.venv/bin/prefect
PY=$ROOT/.venv/bin/python
[ -x "$PREFECT" ] || { echo "prefect_local: $PREFECT not found; run: bash scripts/setup.sh" >&2; exit 1; }

PORT=${MLC_PREFECT_PORT:-4200}
POOL=mlc-local
FLICKR_LIMIT=mlc-flickr
export PREFECT_HOME=${PREFECT_HOME:-$ROOT/.prefect}
# Always set: without it every CLI call and flow starts its own temporary server.
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_LOGGING_EXTRA_LOGGERS=mlc_pipeline
export PYTHONUNBUFFERED=1
LOGS=$PREFECT_HOME/logs
mkdir -p "$LOGS"

SERVER_PID="" WORKER_PID=""

# Start a long-lived process in the background, in its own session (its process group has its pid,
# and a Ctrl-C at the terminal does not reach it: cleanup stops it in order). A background job of a
# script inherits SIGINT *ignored*, and Prefect turns the SIGTERM we stop it with into a SIGINT, so
# SIGINT is restored to its default before exec; otherwise only a SIGKILL would stop the worker.
spawn() {
  local log=$1; shift
  setsid "$PY" -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
    "$@" >"$log" 2>&1 &
}

healthy() { curl -fsS -m 2 "$PREFECT_API_URL/health" >/dev/null 2>&1; }

# Stop one process we started: TERM (Prefect shuts down gracefully), again TERM (Prefect then kills
# itself), then KILL; signals go to its process group (spawn made it the leader), so no flow-run
# child is left behind.
stop_pid() {
  local pid=$1 name=$2 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  echo "prefect_local: stopping $name (pid $pid)"
  for sig in TERM TERM KILL; do
    kill -s "$sig" -- "-$pid" 2>/dev/null || kill -s "$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
      sleep 0.25
    done
  done
}

cleanup() {
  trap - EXIT INT TERM
  stop_pid "$WORKER_PID" worker      # the worker first: it reports to the server while it stops
  stop_pid "$SERVER_PID" server
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. the server (reuse one that already answers on the port; it is then not ours to stop)
if healthy; then
  echo "prefect_local: a Prefect server already answers at $PREFECT_API_URL; using it"
else
  UI_FLAG=()
  [ "${MLC_PREFECT_UI:-1}" = 0 ] && UI_FLAG=(--no-ui)
  echo "prefect_local: starting the Prefect server on 127.0.0.1:$PORT (PREFECT_HOME=$PREFECT_HOME, log $LOGS/server.log)"
  spawn "$LOGS/server.log" "$PREFECT" server start --host 127.0.0.1 --port "$PORT" "${UI_FLAG[@]}"
  SERVER_PID=$!
  for i in $(seq 1 240); do                       # 17-22 s here; give it 2 minutes
    healthy && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "prefect_local: the server exited:" >&2; tail -n 30 "$LOGS/server.log" >&2; exit 1; }
    sleep 0.5
  done
  healthy || { echo "prefect_local: the server did not answer /api/health in 120 s" >&2; tail -n 30 "$LOGS/server.log" >&2; exit 1; }
fi
echo "prefect_local: server up; UI: http://127.0.0.1:$PORT"

# 2. the work pool (before deploy: deploy fails if it does not exist) and the Flickr concurrency limit
"$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 || "$PREFECT" work-pool create "$POOL" --type process
"$PREFECT" gcl inspect "$FLICKR_LIMIT" >/dev/null 2>&1 || "$PREFECT" gcl create "$FLICKR_LIMIT" --limit 1

# 3. the deployments (collect-and-train/nightly on the cron schedule, rebuild-report/rebuild-report)
"$PREFECT" --no-prompt deploy --all

# 4. the worker (runs each flow in a subprocess of this checkout's .venv)
echo "prefect_local: starting a worker on pool $POOL (log $LOGS/worker.log)"
spawn "$LOGS/worker.log" "$PREFECT" worker start --pool "$POOL"
WORKER_PID=$!
for i in $(seq 1 120); do                          # ready when it says so (a few seconds)
  grep -q "started" "$LOGS/worker.log" 2>/dev/null && break
  kill -0 "$WORKER_PID" 2>/dev/null || { echo "prefect_local: the worker exited:" >&2; tail -n 30 "$LOGS/worker.log" >&2; exit 1; }
  sleep 0.5
done

# 5. a first run, watched
RC=0
if [ "$RUN" = 1 ]; then
  ARGS=(deployment run collect-and-train/nightly --watch --watch-timeout "${MLC_WATCH_TIMEOUT:-21600}")
  [ -n "$PARAMS" ] && ARGS+=(--params "$PARAMS")
  echo "prefect_local: first run of collect-and-train/nightly; follow it at http://127.0.0.1:$PORT/runs"
  "$PREFECT" "${ARGS[@]}" || RC=$?
  echo "prefect_local: first run finished with exit status $RC"
fi

if [ "$ONCE" = 1 ]; then
  exit "$RC"
fi
echo "prefect_local: up. UI http://127.0.0.1:$PORT ; next nightly run at 02:00 UTC. Ctrl-C stops the worker, then the server."
while kill -0 "$WORKER_PID" 2>/dev/null; do sleep 5; done
echo "prefect_local: the worker exited; see $LOGS/worker.log" >&2
exit 1
