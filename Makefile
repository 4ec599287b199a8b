# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates its own virtual environment, installs torch first (so pip takes the
# CPU build instead of pulling CUDA packages), then the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install demo serve check test test-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# A real Milvus standalone server for the integration tests ("embedded Milvus" 2.3.5); its
# pins clash with the project's, so it gets its own environment.
MILVUS_SERVER_VENV ?= .venv-milvus-server
$(MILVUS_SERVER_VENV)/.installed:
	$(PYTHON) -m venv $(MILVUS_SERVER_VENV)
	$(MILVUS_SERVER_VENV)/bin/python -m pip install --quiet 'milvus==2.3.5' 'setuptools<81'
	touch $@

# Debian's Chromium for the web page's browser test (Playwright drives it; no browser download).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "install Chromium at $(CHROMIUM) (the browser test needs it)"; exit 1; }
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

install: $(VENV)/.installed

demo: install
	$(BIN)/matryoshka demo

serve: install
	$(BIN)/matryoshka demo --serve

# Lint, format and the import-layer contract: quick, and run first by every test target.
check: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/lint-imports

# Everything, as CI runs it.
test: check $(MILVUS_SERVER_VENV)/.installed $(CHROMIUM)
	MATRYOSHKA_MILVUS_SERVER_PYTHON=$(MILVUS_SERVER_VENV)/bin/python $(BIN)/python -m pytest -q --durations=15

# The quick tier for development: no real servers, no browser, no whole demo (about 5 minutes).
test-quick: check
	$(BIN)/python -m pytest -q -m "not slow and not milvus_server and not browser"

clean:
	rm -rf $(VENV) $(MILVUS_SERVER_VENV) build src/*.egg-info .pytest_cache matryoshka-demo test-artifacts
