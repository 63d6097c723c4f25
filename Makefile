# make test: create .venv if missing, install everything (torch==2.13.0 first), lint, run the tests.
# make demo: start the server on the embedded tiny model, stream a short video with the client CLI into
#            out/demo.mp4, print where the metrics are, stop the server.
# make proto: regenerate the gRPC code from proto/ (the tests fail when it is stale).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
STAMP := $(VENV)/.installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)
PYTEST_ARGS ?=

.PHONY: install test lint demo bench proto clean

install: $(STAMP)

$(STAMP): pyproject.toml proto/python/pyproject.toml clients/python/pyproject.toml $(PLUGINS)
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: an unpinned resolve would pull the CUDA build and gigabytes of packages.
	$(PIP) install -q torch==2.13.0
	# The generated API stubs and the client first: the server depends on the first, the tests on both.
	$(PIP) install -q -e proto/python -e clients/python
	$(PIP) install -q -e '.[dev]'
	for plugin in $(dir $(PLUGINS)); do $(PIP) install -q -e $$plugin || exit 1; done
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PYTHON) -m tokentrim_server.cli.demo --out out/demo.mp4

proto: $(STAMP)
	$(PYTHON) proto/generate.py

bench: $(STAMP)
	$(PYTHON) benchmarks/engine.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
