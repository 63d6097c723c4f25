# make test: create .venv if missing, install everything (torch==2.13.0 first) and the external checkers the
#            tests use (buf, Prometheus and promtool, Chromium: `make tools`), lint, run the tests. On a fresh machine
#            every test runs; only the CUDA-only ones skip without a GPU.
# make tools: install buf (npm, into .tools), Prometheus with promtool, and Chromium with chromedriver for the
#             gateway's browser tests (Debian's packages; need root or sudo).
# make demo: start the server on the drift-lab model cpu-wide-lanes-switch-long-seed0, stream a short video with
#            the client CLI into out/demo.mp4, print where the metrics are, stop the server (DEMO_ARGS="--model
#            tiny": the embedded random-weight model; --help for every flag).
# make watch: start the server on the embedded tiny model and the WebRTC gateway, print the viewer page's URL;
#             Ctrl-C stops both (docs/gateway.md).
# make proto: regenerate the gRPC code from proto/ (the tests fail when it is stale).
# make lab-train: train a drift-lab model (LAB_PRESET, LAB_SEED; LAB_DEVICE=cuda on a GPU) into LAB_OUT.
#                LAB_STAGE=vae: the autoencoder alone (into drift_lab/weights/LAB_PRESET-vae); LAB_STAGE=decoder
#                LAB_VAE_FROM=FOLDER: its decoder tuned on whole clips (into drift_lab/weights/LAB_PRESET-vae-long);
#                LAB_STAGE=transformer LAB_VAE_FROM=FOLDER: a transformer on it. LAB_RESUME=OUT/checkpoint.pt continues a staged run;
#                LAB_THREADS=1 on a shared CPU; LAB_ARGS: more drift_lab.train options (--init-from MODEL: a fine-tune).
# make lab-gate: the quality gate of LAB_OUT (exit 1 when it fails); LAB_GATE_ARGS=--vae-only: its autoencoder's.
# make drift-report: the drift study over LAB_MODELS into docs/drift-lab.md (DRIFT_ARGS=--smoke: a quick run).
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
STAMP := $(VENV)/.installed
PLUGINS := $(wildcard plugins/*/pyproject.toml)
PYTEST_ARGS ?=
DEMO_ARGS ?=
LAB_PRESET ?= smoke
LAB_SEED ?= 0
LAB_DEVICE ?= cpu
LAB_STAGE ?= all
LAB_VAE_FROM ?=
LAB_RESUME ?=
LAB_THREADS ?=
LAB_ARGS ?=
LAB_GATE_ARGS ?=
LAB_OUT ?= drift_lab/weights/$(LAB_PRESET)-$(if $(filter vae,$(LAB_STAGE)),vae,$(if $(filter decoder,$(LAB_STAGE)),vae-long,seed$(LAB_SEED)))
LAB_MODELS ?= $(sort $(dir $(wildcard drift_lab/weights/*/model_index.json)))
DRIFT_ARGS ?=

.PHONY: install tools test lint demo watch bench proto clean lab-train lab-gate drift-report

install: $(STAMP)

$(STAMP): pyproject.toml proto/python/pyproject.toml clients/python/pyproject.toml clients/gateway/pyproject.toml \
		$(PLUGINS)
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: an unpinned resolve would pull the CUDA build and gigabytes of packages.
	$(PIP) install -q torch==2.13.0
	# The generated API stubs and the client first: the server depends on both.
	$(PIP) install -q -e proto/python -e clients/python -e 'clients/gateway[dev]'
	$(PIP) install -q -e '.[dev]'
	for plugin in $(dir $(PLUGINS)); do $(PIP) install -q -e $$plugin || exit 1; done
	touch $(STAMP)

# buf lints proto/ (tests/test_proto.py); npm ships it as @bufbuild/buf. Prometheus and promtool check
# deploy/ (tests/deploy); Chromium and chromedriver run the gateway's page (tests/gateway). Each step does nothing
# when its tools are already there.
tools:
	test -x .tools/node_modules/.bin/buf || npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf
	bash deploy/ci/install-tools.sh
	bash clients/gateway/ci/install-browser.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint tools
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PYTHON) -m tokentrim_server.cli.demo --out out/demo.mp4 $(DEMO_ARGS)

watch: $(STAMP)
	VENV=$(VENV) bash clients/gateway/ci/watch.sh

proto: $(STAMP)
	$(PYTHON) proto/generate.py

bench: $(STAMP)
	$(PYTHON) benchmarks/engine.py

lab-train: $(STAMP)
	$(PYTHON) -m drift_lab.train --preset $(LAB_PRESET) --seed $(LAB_SEED) --device $(LAB_DEVICE) --out $(LAB_OUT) \
		--stage $(LAB_STAGE) $(if $(LAB_VAE_FROM),--vae-from $(LAB_VAE_FROM)) $(if $(LAB_RESUME),--resume $(LAB_RESUME)) \
		$(if $(LAB_THREADS),--threads $(LAB_THREADS)) $(LAB_ARGS)

lab-gate: $(STAMP)
	$(PYTHON) -m drift_lab.gate $(LAB_OUT) --device $(LAB_DEVICE) $(LAB_GATE_ARGS)

drift-report: $(STAMP)
	$(PYTHON) -m drift_lab.report --models $(LAB_MODELS) --device $(LAB_DEVICE) $(DRIFT_ARGS)

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
