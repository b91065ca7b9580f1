# make test: set up .venv from requirements-dev.txt, then lint and run every test.
# make bench: run the call-count and wall-time benchmark against the local endpoint.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test lint bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

lint: $(VENV)/.installed
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench.backup_calls

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache
