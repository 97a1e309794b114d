# One command runs what CI runs: `make test` (and `.ci/run` calls it): ruff, mypy
# strict, import-linter's layer contracts, then the tests with a branch-coverage floor.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test check lint soak bench clean chromium wrk

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,browser,fast]'
	@$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# The dashboard's browser test drives Debian's Chromium (no browser download).
# Installed where we can (root with apt-get); elsewhere that test skips, saying why.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium for the browser test (apt-get)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
		echo "could not install chromium: the browser test will skip"; \
	else echo "no chromium and no apt-get as root: the browser test will skip"; fi

install: $(STAMP)

run: $(STAMP)
	$(PY) server.py $(ARGS)

# The gates first (lint, types, layers), then the tests with branch coverage.
test: lint
	$(PY) -m pytest -m 'not soak' --cov --cov-report=term $(PYTEST_ARGS)

soak: $(STAMP)
	$(PY) -m pytest -m soak $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

check: test

# The README's performance table: each benchmark files its result (revision, machine
# facts) in bench/results/, then the table is regenerated from the newest of each
# (tests/test_bench_report.py fails when they disagree). A few minutes in all; each
# benchmark's arguments can be changed, e.g. `make bench BENCH_HTTP='--invites 500'`.
# ONE=name runs only that one (then the table).
BENCH_FLOOR ?= --seconds 2
BENCH_WORKFLOW ?= --workflows 5000 --floor-seconds 1
BENCH_HTTP ?= --invites 2000 --concurrency 1 64 --wrk 8
BENCH_RECOVERY ?= --workflows 10000
BENCH_MEMORY ?= --actors 100000
BENCH_NAMES := $(if $(ONE),$(ONE),floor workflow http recovery memory)
bench: $(STAMP) wrk
	@for name in $(BENCH_NAMES); do \
		case $$name in floor) a="$(BENCH_FLOOR)";; workflow) a="$(BENCH_WORKFLOW)";; \
			http) a="$(BENCH_HTTP)";; recovery) a="$(BENCH_RECOVERY)";; memory) a="$(BENCH_MEMORY)";; esac; \
		echo "python -m bench $$name $$a"; \
		RETINUE_BENCH_RESULTS=bench/results $(PY) -m bench $$name $$a || exit 1; \
	done
	$(PY) -m bench.report --write

# The http benchmark's load generator: wrk (C, one thread) takes far less CPU per
# request than a Python client on the same cores. Without it, only the Python client runs.
wrk:
	@if command -v wrk >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing wrk for the http benchmark (apt-get)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1; } || \
		echo "could not install wrk: the http benchmark uses its Python client only"; \
	else echo "no wrk and no apt-get as root: the http benchmark uses its Python client only"; fi

clean:
	rm -rf $(VENV) .retinue .pytest_cache .mypy_cache .ruff_cache
