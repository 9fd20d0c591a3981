# The two commands of the README:
#   make demo   install everything into .venv and run the churn job's DAG on the embedded default
#   make test   install everything into .venv, lint, and run the whole test suite (two pytest workers)
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# reinstall whenever pyproject.toml or the pinned versions change
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
ARGS ?=
PIP_INSTALL := pip install --quiet --disable-pip-version-check
# pip's warning for each package an extra index of this machine's pip.conf does not hold
PIP_QUIET := { grep -v 'is ignored: it is neither' || true; }

help:
	@echo "make demo   install, build the demo lake and models, run lakecast__churn through Airflow"
	@echo "make test   install, lint, run the tests (slow end-to-end tests included)"
	@echo "make bench  install, run the benchmark (ARGS='--rows 1000000')"
	@echo "make constraints  re-resolve the dependencies from pyproject.toml, pin them in constraints.txt"

# The versions every dependency was tested at (constraints.txt), as Airflow installs itself: the
# same environment on every machine and every night, and no resolver search (about 170 s of pip's
# CPU on 2 cores, and backtracking whenever any package releases).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing lakecast and its dependencies into $(VENV) (a few minutes the first time)"
	@$(BIN)/$(PIP_INSTALL) -c constraints.txt -e '.[test]' 2>&1 | $(PIP_QUIET)
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# What the end-to-end tests start besides Python packages: PostgreSQL and headless Chromium,
# from Debian's packages (apt-get, as root or through sudo).
SUDO := $(shell test "$$(id -u)" = 0 || echo sudo)
DEBS := postgresql chromium chromium-driver
system-deps:
	@if ! { ls /usr/lib/postgresql/*/bin/initdb && command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(DEBS)"; \
	  $(SUDO) apt-get install -y -q $(DEBS) >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q $(DEBS) >/dev/null; }; \
	fi

demo: $(STAMP)
	$(BIN)/lakecast demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint system-deps
	$(BIN)/lakecast validate
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder $(ARGS)

bench: $(STAMP)
	$(BIN)/lakecast bench $(ARGS)

# Re-resolve every dependency from pyproject.toml alone, in a scratch virtualenv, and pin what pip
# chose into constraints.txt; then `make test` installs and tests exactly that.
RESOLVE := build/resolve-venv
constraints:
	rm -rf $(RESOLVE) && $(PYTHON) -m venv $(RESOLVE)
	$(RESOLVE)/bin/$(PIP_INSTALL) -e '.[test]' 2>&1 | $(PIP_QUIET)
	{ sed -n '/^#/p' constraints.txt; \
	  $(RESOLVE)/bin/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf $(RESOLVE)

clean:
	rm -rf .lakecast test-artifacts

.PHONY: help install system-deps demo lint test bench constraints clean
