# robust: set up, run the quickstart, test. Everything works offline once `make setup` has run.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup setup-extras quickstart test test-slow test-all lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

# The optional logger extras (tensorboard, mlflow-skinny: ~190 MB with their dependencies, ~40 s from a local
# index), so that tests/test_tracking.py runs instead of skipping; CI runs it after `make setup`.
setup-extras: $(VENV)/.installed-extras

$(VENV)/.installed-extras: $(VENV)/.installed
	$(PIP) install --quiet --disable-pip-version-check -e ".[dev,tensorboard,mlflow]"
	touch $@

quickstart: setup
	$(VENV)/bin/robust train experiment=quickstart

# The default suite (a few minutes): everything but the tests marked slow, on two worker processes
# (pytest-xdist; each test single-threaded, see tests/conftest.py), then the `serial` ones, which write into the
# package tree, alone. PYTEST_WORKERS=0 runs the first part in one process.
PYTEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -m "not slow and not serial" -n $(PYTEST_WORKERS)
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -m "serial and not slow"

# The slow-marked tests (real MNIST, multi-process, packaging); CI runs them after `make test`.
test-slow: setup
	$(VENV)/bin/pytest -q -m slow

test-all: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check robust_cli tests scripts

clean:
	rm -rf outputs .pytest_cache
