# onnxplain: `make run` starts everything; `make test` runs the whole suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lock lock-check run test check lint audit format bench demo-model clean

setup: $(STAMP)

# Installs exactly requirements.lock (every file checked by its hash), then the
# project itself without resolving anything; re-runs when the lock or pyproject.toml changes (the editable
# install maps the packages it lists, sdk/onnxplain_client included).
$(STAMP): requirements.lock pyproject.toml
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null); \
	  else echo "redis-server is missing: apt-get install redis-server (or set ONNXPLAIN_REDIS_URL)"; fi; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# After changing pyproject.toml's dependencies: refresh the lock (needs the
# network), then commit pyproject.toml, requirements.in and requirements.lock
# together. `make lock LOCK_ARGS=--upgrade` also moves pins that still fit.
lock: setup
	$(PY) tools/lock.py lock $(LOCK_ARGS)

# Offline: fails when pyproject.toml and the lock disagree.
lock-check: setup
	$(PY) tools/lock.py check

run: setup
	$(VENV)/bin/onnxplain up

test: setup
	$(PY) -m pytest

lint: setup lock-check
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Known vulnerabilities of every pin in the lock (PyPI's advisory data, by exact version; fails on one found).
# --no-deps: the lock is already complete; --disable-pip: nothing is installed to resolve it. A pin PyPI does not
# know is listed as skipped, not failed: read the table.
audit: setup
	$(VENV)/bin/pip-audit --disable-pip --no-deps -r requirements.lock --progress-spinner off

check: lint audit
	$(VENV)/bin/mypy
	$(PY) -m pytest

# `make bench BENCH_DEVICE=cuda` runs the explain, audit, kernel, HTTP and image tables on the CUDA provider (the CPU,
# with one log line, where none runs); `BENCH_ARGS=--quick` is the smoke test's short mode.
BENCH_DEVICE ?= cpu
BENCH_ARGS ?=
bench: setup
	$(PY) bench/variants.py
	$(PY) bench/explain.py --device $(BENCH_DEVICE) $(BENCH_ARGS)
	$(PY) bench/audit.py --device $(BENCH_DEVICE) $(BENCH_ARGS)
	$(PY) bench/kernel.py --device $(BENCH_DEVICE) $(BENCH_ARGS)
	$(PY) bench/http_bench.py --device $(BENCH_DEVICE) $(BENCH_ARGS)
	$(PY) bench/predict_wsgi.py --device $(BENCH_DEVICE) $(BENCH_ARGS)
	$(PY) bench/perception.py --device $(BENCH_DEVICE) $(BENCH_ARGS)
	$(PY) bench/counterfactual.py

demo-model: setup
	$(PY) demo/build_demo.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
