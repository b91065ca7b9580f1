# make test: set up .venv from requirements-dev.txt, then lint, type-check and run every test.
# make demo: back up a local fleet three times, lose a server and restore it (no AWS account).
# make bench: run every benchmark against the local endpoint; write bench/RESULTS.md.
# make dist: build dist/ec2_to_ami.pyz and dist/ami_to_ec2.pyz, one file each for a host.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck bench dist clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) -m demo.demo

lint: $(VENV)/.installed
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

typecheck: $(VENV)/.installed
	$(PY) -m mypy

test: lint typecheck
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench.all

dist:
	$(PYTHON) tools/make_dist.py dist

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache .mypy_cache dist build *.egg-info
