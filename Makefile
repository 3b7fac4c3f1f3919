# onnxplain: `make run` starts everything; `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test check lint format bench demo-model clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null); \
	  else echo "redis-server is missing: apt-get install redis-server (or set ONNXPLAIN_REDIS_URL)"; fi; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25.1"
	$(PY) -m pip install -q -e ".[explain]" --group tests --group typing --group dev
	touch $(STAMP)

run: setup
	$(VENV)/bin/onnxplain up

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

check: lint
	$(VENV)/bin/mypy
	$(PY) -m pytest

bench: setup
	$(PY) bench/variants.py
	$(PY) bench/explain.py
	$(PY) bench/audit.py

demo-model: setup
	$(PY) demo/build_demo.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
