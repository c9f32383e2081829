# The README's commands. Each works on a fresh machine: it creates .venv and installs first.
# torch==2.13.0 is installed before the project so pip takes the local CPU build instead of
# resolving the loose `torch>=` requirement to a CUDA wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test bench clean redis-server prometheus

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/switchyard run manifests/quickstart.yaml

# The Redis tenant store's tests start real redis-servers (tests/services.py); install the Debian
# package where it is missing (this runs as root, as here and in CI).
redis-server:
	command -v redis-server >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server)

# The metrics tests check the dashboard and alert rules against a real Prometheus (and promtool,
# which Debian's package brings).
prometheus:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus)

# PYTHONFAULTHANDLER: a crash after the summary, while the interpreter exits with Ray's threads
# still alive, prints every thread's stack (pytest's own fault handler is gone by then).
test: $(STAMP) redis-server prometheus
	PYTHONFAULTHANDLER=1 $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/engine_throughput.py

clean:
	rm -rf $(VENV)
