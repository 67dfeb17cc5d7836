# The two commands of the quickstart are `make run` and `make test`; CI runs `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= ./.clew
HOST ?= 127.0.0.1
PORT ?= 8088

.PHONY: run test lint typecheck pytest bench clean

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

test: lint typecheck pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	sh scripts/redis.sh
	sh scripts/kafka.sh
	sh scripts/spark.sh
	$(BIN)/pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
