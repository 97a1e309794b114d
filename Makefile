# One command runs what CI runs: `make test` (and `.ci/run` calls it): ruff, mypy
# strict, import-linter's layer contracts, then the tests with a branch-coverage floor.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test check lint soak bench clean chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,browser]'
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

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .retinue .pytest_cache .mypy_cache .ruff_cache
