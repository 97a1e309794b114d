# One command runs what CI runs: `make test` (and `.ci/run` calls it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test check lint soak bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) server.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m 'not soak' $(PYTEST_ARGS)

soak: $(STAMP)
	$(PY) -m pytest -m soak $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

check: lint test

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .retinue .pytest_cache .mypy_cache .ruff_cache
