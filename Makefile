# The two commands of the README:
#   make demo   install everything into .venv and run the churn job's DAG on the embedded default
#   make test   install everything into .venv, lint, and run the whole test suite (two pytest workers)
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# reinstall whenever pyproject.toml changes
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
ARGS ?=

help:
	@echo "make demo   install, build the demo lake and models, run lakecast__churn through Airflow"
	@echo "make test   install, lint, run the tests (slow end-to-end tests included)"
	@echo "make bench  install, run the benchmark (ARGS='--rows 1000000')"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing lakecast and its dependencies into $(VENV) (a few minutes the first time)"
	@$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
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

clean:
	rm -rf .lakecast test-artifacts

.PHONY: help install system-deps demo lint test bench clean
