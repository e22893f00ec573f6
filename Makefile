# txguard entry points. Each target bootstraps what it needs on a machine with Python 3.11+, make and git.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
RUN := $(VENV)/bin

export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_TELEMETRY := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
export PYSPARK_PYTHON := $(CURDIR)/$(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install browser demo test test-fast ui ui-readonly mlflow lint format bench bench-scale clean

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	$(RUN)/dagster-dbt project prepare-and-package --file orchestration/defs/transform.py
	touch $@

install: $(VENV)/.installed ## create .venv from uv.lock

# The browser tests drive Debian's Chromium through Playwright (nothing downloads a browser of its own).
CHROMIUM := $(shell command -v chromium 2>/dev/null)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser: ## Debian's chromium for the browser tests
ifeq ($(CHROMIUM),)
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium
endif

demo: install ## simulate data and run the whole pipeline end to end
	$(RUN)/txguard demo

test: install browser ## the whole test suite, slow end-to-end tests included
	$(RUN)/pytest

test-fast: install browser ## everything but the slow tests, on two workers (under 3 minutes on 2 cores)
	$(RUN)/pytest -m "not slow" -n 2 --dist loadfile

ui: install ## Dagster web UI and daemon on http://127.0.0.1:3000
	$(RUN)/txguard ui

mlflow: install ## MLflow tracking server and UI on http://127.0.0.1:5000
	$(RUN)/txguard mlflow

ui-readonly: install ## a read-only web UI for reviewers on http://127.0.0.1:3001
	$(RUN)/txguard ui --read-only --port 3001

lint: install ## ruff lint and format check
	$(RUN)/ruff check .
	$(RUN)/ruff format --check .

format: install
	$(RUN)/ruff check --fix .
	$(RUN)/ruff format .

bench: install ## benchmarks: printed ratios against references measured in the same run
	$(RUN)/python -m benchmarks

FACTOR ?= 10
bench-scale: install ## the pipeline at FACTOR x the handbook's volume (default 10; about an hour), against the targets
	$(RUN)/python -m benchmarks scale --factor $(FACTOR)

clean: ## remove the local data home (.txguard) and build outputs
	rm -rf .txguard dbt_project/target dbt_project/logs
