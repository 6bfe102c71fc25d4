#!/usr/bin/env bash
# Start the local Prefect server (SQLite, 127.0.0.1 only) and a process worker; register the
# work pool, the global concurrency limits and the deployments of prefect.yaml.
set -euo pipefail
source "$(dirname "$0")/prefect-env.sh"
cd "$REFINE_ROOT"

health() { python3 - "$PREFECT_API_URL/health" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2).read()
except Exception:
    sys.exit(1)
PY
}

if ! health; then
  nohup "$PREFECT_BIN" server start --host 127.0.0.1 --port "$PREFECT_PORT" >"$RUN_DIR/server.log" 2>&1 &
  echo $! >"$RUN_DIR/server.pid"
  # Up to 120 s for the database migrations; a server that exits (a missing command or module) ends it at once.
  for _ in $(seq 120); do
    health && break
    kill -0 "$(cat "$RUN_DIR/server.pid")" 2>/dev/null || break
    sleep 1
  done
  health || {
    echo "Prefect server did not come up; the tail of $RUN_DIR/server.log:" >&2
    tail -n 15 "$RUN_DIR/server.log" >&2
    exit 1
  }
fi

# The process pool this worker serves, and the GPU pool that workers on GPU hosts serve
# (`prefect worker start --pool refine-gpu` there; its job template sets CUDA_VISIBLE_DEVICES).
pool() {
  "$PREFECT_BIN" work-pool inspect "$1" >/dev/null 2>&1 ||
    "$PREFECT_BIN" work-pool create "$1" --type process --base-job-template "$2" >/dev/null
}
pool "$REFINE_POOL" infra/process-job-template.json
pool "$REFINE_GPU_POOL" infra/gpu-job-template.json
# One GPU job and one DVC run at a time, whatever deployment starts them.
for limit in gpu dvc; do
  "$PREFECT_BIN" gcl inspect "$limit" >/dev/null 2>&1 || "$PREFECT_BIN" gcl create "$limit" --limit 1 >/dev/null
done
"$PREFECT_BIN" --no-prompt deploy --all >"$RUN_DIR/deploy.log" 2>&1 ||
  { cat "$RUN_DIR/deploy.log" >&2; exit 1; }

if ! { [ -f "$RUN_DIR/worker.pid" ] && kill -0 "$(cat "$RUN_DIR/worker.pid")" 2>/dev/null; }; then
  nohup "$PREFECT_BIN" worker start --pool "$REFINE_POOL" >"$RUN_DIR/worker.log" 2>&1 &
  echo $! >"$RUN_DIR/worker.pid"
fi
echo "Prefect UI:  http://127.0.0.1:${PREFECT_PORT}"
echo "API:         $PREFECT_API_URL   (export PREFECT_API_URL=$PREFECT_API_URL)"
echo "Worker pool: $REFINE_POOL   logs: $RUN_DIR"
