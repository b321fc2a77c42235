# sfstream developer commands. `make demo` and `make test` are the two set-up commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FAYE := tests/interop/faye
FAYE_STAMP := $(FAYE)/node_modules/.installed

.PHONY: help install demo test lint typecheck pytest emulator bench chaos fuzz image clean

help:
	@echo "make demo      run the connector end to end against the bundled emulator"
	@echo "make test      lint, type-check and run the test suite"
	@echo "make emulator  start the Salesforce emulator on port 8787"
	@echo "make bench     run the benchmarks under bench/ (about 15 minutes)"
	@echo "make chaos     100,000 events under seeded faults and 20 SIGKILLs, then an audit"
	@echo "               (CHAOS_ARGS=\"--sink kafka|postgres|s3\": another sink than the file)"
	@echo "make fuzz      the hypothesis fuzz tests (tests/fuzz) with many more examples"
	@echo "make image     the container image (deploy/Dockerfile) with podman or buildah"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sfstream needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-warn-script-location -e '.[dev]'
	@# An editable install leaves src/ uncompiled, and PYTHONDONTWRITEBYTECODE (set on some
	@# machines) stops Python from caching it: every `sfstream` process would compile it again.
	$(BIN)/python -m compileall -q src >/dev/null
	@touch $(STAMP)

# Faye, the independent Bayeux server of tests/interop/test_faye.py, comes from npm.
$(FAYE_STAMP): $(FAYE)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js 18+) is needed for the interop tests"; exit 1; }
	cd $(FAYE) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

pytest: $(STAMP) $(FAYE_STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

emulator: $(STAMP)
	$(BIN)/sfstream emulator --port 8787

# About 15 minutes on 2 cores; each script takes
# --quick for a smoke run. py-spy is only for the profiles (--profile), so it is installed
# here rather than declared in pyproject.toml.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet py-spy
	$(BIN)/python bench/emulator_throughput.py
	$(BIN)/python bench/throughput.py --profile
	$(BIN)/python bench/latency.py --profile
	$(BIN)/python bench/footprint.py

# CHAOS_ARGS passes options through, e.g. make chaos CHAOS_ARGS="--seed 7 --kills 30".
# --sink kafka|postgres|s3 targets another sink than the file: bench/servers.py starts Tansu or
# moto's server for the run; PostgreSQL must be running (127.0.0.1:5432, database test).
# bench/chaos/ is a package, run as a module from the repository root.
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

# The `fuzz` hypothesis profile (tests/conftest.py) runs each fuzz test far longer.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/fuzz --timeout 0 $(FUZZ_ARGS)

# The service image, localhost/sfstream:latest unless IMAGE names another (also tagged with the
# version). Its base is bootstrapped locally when missing (deploy/build-base.sh: no registry
# needed); tests/certify/fargate then runs the image instead of a process.
IMAGE ?= localhost/sfstream:latest
image:
	deploy/build-image.sh $(IMAGE)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist
