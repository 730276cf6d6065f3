# baton: `make up` runs it locally, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: up down test test-unit bench bench-composition bench-training install clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/baton up

down: $(STAMP)
	$(BIN)/baton down

test: $(STAMP) chromium
	$(BIN)/pytest

# Headless Chromium for the offline-docs browser test; installed with apt when missing and
# root (CI); elsewhere that test skips and says why.
chromium:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || { \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	}

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks.request_path

bench-composition: $(STAMP)
	$(BIN)/python -m benchmarks.composition

bench-training: $(STAMP)
	$(BIN)/python -m benchmarks.training

clean:
	rm -rf $(VENV) .pytest_cache
