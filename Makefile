# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8000
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint typecheck pytest services bench clean help

help:
	@echo "make demo   - install, migrate a SQLite file, seed demo data, serve on 127.0.0.1:$(PORT)"
	@echo "make test   - install, start local servers if needed, lint, typecheck, run the suite"
	@echo "make bench  - run the benchmarks in bench/ (~20 min; BENCH_ARGS=--quick for a smoke run)"

# Two distributions from one checkout (docs/adopting.md): pooltender (.) and pooltender-coupons
# (service/), both editable in the one venv. setuptools>=77 and wheel, the build backend, are
# installed first so that tests/test_distributions.py can build wheels offline
# (--no-build-isolation).
$(STAMP): pyproject.toml service/pyproject.toml
	@scripts/ensure-system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 'setuptools>=77' wheel
	$(BIN)/python -m pip install -q -e '.[all,dev,mysql,postgres]' -e './service[mysql,postgres]'
	@touch $(STAMP)

services:
	@scripts/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check src service/src tests bench
	$(BIN)/ruff format --check src service/src tests bench
	$(BIN)/pooltender lint .

typecheck: $(STAMP)
	$(BIN)/mypy

PYTEST_WORKERS ?= 2

pytest: $(STAMP) services
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=15

test: lint typecheck pytest

demo: $(STAMP)
	PORT=$(PORT) $(BIN)/coupons demo

BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	@touch $(BENCH_STAMP)

# BENCH_ARGS: e.g. --quick (a smoke run), or names (service_load request_cpu ...)
bench: $(BENCH_STAMP) services
	@scripts/ensure-system-deps.sh  # wrk, even when the venv was built before it was listed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
