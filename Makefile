# signerd: `make run` sets everything up and runs the demo; `make test` runs every check.
SHELL := /bin/bash
# Everything runs in the project's own virtual environment: the system Python is never
# installed into (PEP 668 systems refuse it), and the tests run against the installed
# (editable) package, not a PYTHONPATH.
VENV ?= .venv
BASE_PYTHON ?= python3
PYTHON := $(CURDIR)/$(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
unexport PYTHONPATH
RUN_DIR ?= .run

APT_PACKAGES := softhsm2 notary docker-registry skopeo postgresql
empty :=
space := $(empty) $(empty)
comma := ,
PY_IMPORTS := signer signer_api signer_client pkcs11 grpc grpc_tools grpc_health grpc_reflection grpc_status google.protobuf cryptography tuf securesystemslib uvloop pytest pytest_timeout psycopg psycopg_pool prometheus_client

# buf (proto lint): from PATH, else installed by `make deps` into $(VENV)/buf with npm, if npm
# is there; without it buf-lint is skipped and tests/test_proto_lint.py checks the same rules.
BUF_LOCAL := $(VENV)/buf/node_modules/.bin/buf

.PHONY: help deps run demo stop test lint buf-lint typecheck proto proto-check pytest bench clean

help:
	@echo "make run    install what is missing, create a SoftHSM token, dev PKI and state, start signerd, run the demo"
	@echo "make test   lint, type-check, check generated code, run the test suite"
	@echo "make stop   stop the daemon started by make run"
	@echo "make bench  run the benchmarks under bench/"
	@echo "make proto  regenerate gRPC code from protos/"

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@if [ ! -x $(PYTHON) ]; then echo "creating $(VENV)"; $(BASE_PYTHON) -m venv $(VENV); fi
	@if ! $(PYTHON) -c 'import $(subst $(space),$(comma),$(PY_IMPORTS))' 2>/dev/null || [ ! -x $(VENV)/bin/ruff ] || ! $(PYTHON) -m mypy --version >/dev/null 2>&1; then \
	  echo "installing Python packages into $(VENV)"; \
	  $(PYTHON) -m pip install -q -e ./api -e ./clients -e '.[dev]'; \
	fi
	@if ! command -v buf >/dev/null && [ ! -x $(BUF_LOCAL) ] && command -v npm >/dev/null; then \
	  echo "installing buf into $(VENV)/buf (npm)"; \
	  npm install --silent --prefix $(VENV)/buf @bufbuild/buf >/dev/null 2>&1 \
	    || echo "buf not installed (npm failed); tests/test_proto_lint.py checks its rules"; \
	fi

run: deps
	@RUN_DIR=$(RUN_DIR) PYTHON=$(PYTHON) scripts/dev-up.sh

demo:
	@RUN_DIR=$(RUN_DIR) PYTHON=$(PYTHON) scripts/dev-up.sh --demo-only

stop:
	@if [ -f $(RUN_DIR)/signerd.pid ] && kill -0 $$(cat $(RUN_DIR)/signerd.pid) 2>/dev/null; then \
	  kill -TERM $$(cat $(RUN_DIR)/signerd.pid) && echo "signerd stopped"; else echo "signerd is not running"; fi
	@rm -f $(RUN_DIR)/signerd.pid

test: deps lint typecheck proto-check pytest

lint: buf-lint
	ruff check signer api clients tests bench scripts
	ruff format --check signer api clients tests bench scripts

buf-lint:
	@buf=$$(command -v buf || { [ -x $(BUF_LOCAL) ] && echo $(BUF_LOCAL); } || true); \
	if [ -n "$$buf" ]; then $$buf lint && echo "buf lint: clean"; \
	else echo "buf not installed: buf lint skipped (tests/test_proto_lint.py checks its rules)"; fi

typecheck:
	$(PYTHON) -m mypy

proto:
	scripts/gen-protos.sh

proto-check:
	scripts/gen-protos.sh --check

pytest:
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

bench: deps
	@for b in bench/bench_*.py; do echo "== $$b"; $(PYTHON) $$b || exit 1; done

clean: stop
	rm -rf $(RUN_DIR)
