#!/usr/bin/env bash
# Stop the worker and the server that serve.sh started.
set -uo pipefail
source "$(dirname "$0")/prefect-env.sh"
for name in worker server; do
  pidfile="$RUN_DIR/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $name (PID $pid)"
  fi
  rm -f "$pidfile"
done
