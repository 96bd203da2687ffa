#!/usr/bin/env bash
# Bring mlc-pipeline's orchestration up on this machine, after `bash scripts/setup.sh`:
#   1. a Prefect server on 127.0.0.1:$MLC_PREFECT_PORT (default 4200), its SQLite database in
#      $PREFECT_HOME (default .prefect/ in the project, git-ignored),
#   2. the process work pool `mlc-local` and the global concurrency limit `mlc-flickr` (1 collect at a time;
#      $MLC_FLICKR_CONCURRENCY_LIMIT renames it, here and in the worker's flow runs),
#   3. the deployments of prefect.yaml (`prefect --no-prompt deploy --all`),
#   4. a worker on the pool,
#   5. a first run of collect-and-train/nightly, watched until it ends;
# then it stays up so the nightly schedule (02:00 UTC) runs, until Ctrl-C (or SIGTERM): it cancels the
# pool's in-flight runs and waits for them to end (up to MLC_STOP_WAIT s, then marks them Crashed), then
# stops the worker, then the server. Before starting its worker it marks Crashed the pool's runs a gone
# worker left unfinished (python -m flows.stale_runs). See docs/orchestration.md.
#
# Usage: bash scripts/prefect_local.sh [--once] [--no-run] [--params JSON]
#   --once         stop everything after the first run; exit with the run's status
#   --no-run       no first run (just bring everything up)
#   --params JSON  parameters of the first run, e.g. '{"config_path": "configs/offline.yaml",
#                  "overrides": {"train": {"epochs": 2}}}' (default: the deployment's)
# Environment: MLC_PREFECT_PORT, PREFECT_HOME, MLC_PREFECT_UI=0 (no UI), MLC_WATCH_TIMEOUT (s, 21600),
#              MLC_STOP_WAIT (s, 60), MLC_FLICKR_CONCURRENCY_LIMIT (mlc-flickr).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

ONCE=0 RUN=1 PARAMS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --once) ONCE=1 ;;
    --no-run) RUN=0 ;;
    --params) PARAMS=${2:?--params needs a JSON mapping}; shift ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "prefect_local: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PREFECT=$ROOT/.venv/bin/prefect
PY=$ROOT/.venv/bin/python
[ -x "$PREFECT" ] || { echo "prefect_local: $PREFECT not found; run: bash scripts/setup.sh" >&2; exit 1; }

PORT=${MLC_PREFECT_PORT:-4200}
POOL=mlc-local
FLICKR_LIMIT=${MLC_FLICKR_CONCURRENCY_LIMIT:-mlc-flickr}
export MLC_FLICKR_CONCURRENCY_LIMIT=$FLICKR_LIMIT    # the worker's flow runs take this one
export PREFECT_HOME=${PREFECT_HOME:-$ROOT/.prefect}
# Always set: without it every CLI call and flow starts its own temporary server.
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_LOGGING_EXTRA_LOGGERS=mlc_pipeline
export PYTHONUNBUFFERED=1
LOGS=$PREFECT_HOME/logs
mkdir -p "$LOGS"

SERVER_PID="" WORKER_PID="" WATCH_PID=""
# This script's worker, by a fixed name and a pid file: a later start knows it for its own, so it can
# stop a previous one left running (this script killed with -9) and not wait for its heartbeat to age.
WORKER_NAME=$POOL-$(hostname)
WORKER_PIDFILE=$PREFECT_HOME/worker.pid

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
  [ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null
  # A flow run killed along with its worker would stay Running forever and hold the deployment's
  # concurrency slot: cancel the pool's runs while the worker can still end them, then crash leftovers.
  if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null && healthy; then
    "$PY" -m flows.stale_runs stop-runs --pool "$POOL" --wait "${MLC_STOP_WAIT:-60}" \
      || echo "prefect_local: could not end the in-flight runs; see docs/orchestration.md" >&2
  fi
  stop_pid "$WORKER_PID" worker      # the worker first: it reports to the server while it stops
  [ -n "$WORKER_PID" ] && rm -f "$WORKER_PIDFILE"
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

# 4. runs a gone worker left Running (its script killed, the machine down) would block the deployment
# forever: crash them, unless another worker of the pool is alive (a heartbeat in the last 90 s). A
# previous worker of this script that still runs is stopped first, its runs cancelled.
OLD_PID=$(cat "$WORKER_PIDFILE" 2>/dev/null || true)
if [ -n "$OLD_PID" ] && ps -o args= -p "$OLD_PID" 2>/dev/null | grep -q "worker start"; then
  echo "prefect_local: a previous worker of this script still runs (pid $OLD_PID); ending its runs and stopping it"
  "$PY" -m flows.stale_runs stop-runs --pool "$POOL" --wait "${MLC_STOP_WAIT:-60}" || true
  stop_pid "$OLD_PID" "previous worker"
fi
"$PY" -m flows.stale_runs crash-orphans --pool "$POOL" --dead-worker "$WORKER_NAME" \
  || echo "prefect_local: could not check for runs left unfinished; see docs/orchestration.md" >&2

# 5. the worker (runs each flow in a subprocess of this checkout's .venv)
echo "prefect_local: starting a worker on pool $POOL (log $LOGS/worker.log)"
spawn "$LOGS/worker.log" "$PREFECT" worker start --pool "$POOL" --name "$WORKER_NAME"
WORKER_PID=$!
echo "$WORKER_PID" >"$WORKER_PIDFILE"
for i in $(seq 1 120); do                          # ready when it says so (a few seconds)
  grep -q "started" "$LOGS/worker.log" 2>/dev/null && break
  kill -0 "$WORKER_PID" 2>/dev/null || { echo "prefect_local: the worker exited:" >&2; tail -n 30 "$LOGS/worker.log" >&2; exit 1; }
  sleep 0.5
done

# 6. a first run, watched (in the background: a SIGTERM to this script is handled at once, not
# after the run)
RC=0
if [ "$RUN" = 1 ]; then
  ARGS=(deployment run collect-and-train/nightly --watch --watch-timeout "${MLC_WATCH_TIMEOUT:-21600}")
  [ -n "$PARAMS" ] && ARGS+=(--params "$PARAMS")
  echo "prefect_local: first run of collect-and-train/nightly; follow it at http://127.0.0.1:$PORT/runs"
  "$PREFECT" "${ARGS[@]}" &
  WATCH_PID=$!
  wait "$WATCH_PID" || RC=$?
  WATCH_PID=""
  echo "prefect_local: first run finished with exit status $RC"
fi

if [ "$ONCE" = 1 ]; then
  exit "$RC"
fi
echo "prefect_local: up. UI http://127.0.0.1:$PORT ; next nightly run at 02:00 UTC. Ctrl-C cancels the runs in flight, stops the worker, then the server."
while kill -0 "$WORKER_PID" 2>/dev/null; do sleep 5; done
echo "prefect_local: the worker exited; see $LOGS/worker.log" >&2
exit 1
