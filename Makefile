# The two commands of the quickstart are `make run` and `make test`; CI runs `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./.clew
HOST ?= 127.0.0.1
PORT ?= 8088

.PHONY: run test test-fast lint typecheck services pytest pytest-fast bench clean cluster cluster-stop

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/clew serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

# Everything CI runs (.ci/run). `make test-fast` is the edit loop: the same without the
# tests marked slow (end-to-end suites that start `clew serve` processes, the bench runs).
test: lint typecheck pytest

test-fast: lint typecheck pytest-fast

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The servers the suite starts (Redis, Kafka, Spark's jars, a headless Chromium): installed, or
# a hint (CI fails).
services: $(VENV)/.installed-dev
	sh scripts/redis.sh
	sh scripts/kafka.sh
	sh scripts/spark.sh
	sh scripts/chromium.sh

pytest: services
	$(BIN)/pytest

pytest-fast: services
	$(BIN)/pytest -m "not slow"

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/latency.py

# A local Kafka (KRaft) and Redis (append-only file) on loopback, and .cluster/clew.toml for
# scale-out (docs/operations.md); `make cluster-stop` stops them, keeping their data.
cluster:
	sh scripts/cluster.sh start

cluster-stop:
	sh scripts/cluster.sh stop

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
