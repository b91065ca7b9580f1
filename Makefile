# make test: set up .venv from requirements-dev.txt, then lint, type-check and run every test.
# make demo: back up a local fleet three times, lose a server and restore it (no AWS account).
# make bench: run every benchmark against the local endpoint; write bench/RESULTS.md and
#   the guide's measured figures (tools/make_guide.py).
# make dist: build dist/ec2_to_ami.pyz and dist/ami_to_ec2.pyz, one file each for a host.
# make install: install on this admin host (root): user, directories, run-time venv, configs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck cron bench dist clean install

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@echo "Setting up $(VENV) from requirements-dev.txt: boto3, moto (the local AWS endpoint), pytest,"
	@echo "ruff and mypy. pip is quiet, and on a fresh clone this takes a few minutes."
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

# The cron tests need Debian's crontab command: installed here when root can, else a loud stop.
cron:
	@command -v crontab >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  echo "make test: installing Debian's cron package for the cron tests" && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cron >/dev/null; } || \
	  { echo "make test: the cron tests need the crontab command: apt-get install cron (as root)" >&2; exit 1; }

test: lint typecheck cron
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench.all
	$(PY) tools/make_guide.py

dist:
	$(PYTHON) tools/make_dist.py dist

# make install: the tool on this admin host (as root), as README's "Install" says.
install:
	sh tools/install.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache .mypy_cache dist build *.egg-info
