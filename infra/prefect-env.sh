# Sourced by the infra scripts: where the local Prefect server keeps its state and listens.
# Override any of these in the environment before calling `make serve`.
: "${REFINE_ROOT:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${PREFECT_PORT:=4200}"
: "${PREFECT_HOME:=$REFINE_ROOT/data/prefect}"
: "${REFINE_POOL:=refine-process}"
: "${REFINE_GPU_POOL:=refine-gpu}"
export REFINE_ROOT PREFECT_HOME REFINE_POOL REFINE_GPU_POOL
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"
# Local only: SQLite under PREFECT_HOME, bound to loopback, no telemetry.
export PREFECT_SERVER_API_HOST=127.0.0.1
export PREFECT_SERVER_API_PORT="$PREFECT_PORT"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///${PREFECT_HOME}/prefect.db"
: "${PREFECT_BIN:=$(command -v prefect || echo "$REFINE_ROOT/.venv/bin/prefect")}"
RUN_DIR="$PREFECT_HOME/run"
mkdir -p "$RUN_DIR"
