# robust: set up, run the quickstart, test. Everything works offline once `make setup` has run.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup quickstart test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

quickstart: setup
	$(VENV)/bin/robust train experiment=quickstart

# The whole suite, slow tests included (what CI runs).
test: setup
	$(VENV)/bin/pytest -q

# Skip the slow-marked tests.
test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check robust_cli tests scripts

clean:
	rm -rf outputs .pytest_cache
