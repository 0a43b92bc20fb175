# DEL developer entry points. `make install` builds .venv; every other target uses it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The CPU build of torch that lies on this machine's disk; an unpinned torch pulls CUDA.
TORCH  := torch==2.13.0

.PHONY: install test lint format proto bench demo clean

install: $(BIN)/del-client

$(BIN)/del-client: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[server,dev]'
	touch $@

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Regenerate del_client/proto from protos/ (a test fails when they are stale).
proto: install
	$(BIN)/python protos/generate.py

bench: install
	$(BIN)/python -m del_client.bench --out reports
	$(BIN)/python -m del_server.bench --out reports

# A real server and client over gRPC: MODEL=path-or-hub-id and ADAPTER=dir override defaults.
demo: install
	$(BIN)/python -m del_server.demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
