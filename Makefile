# Tapster: `make serve` and `make test` set up everything they need on a fresh machine.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APP    ?= tapster.demo:app
LISTEN ?= 127.0.0.1:8080
ARGS   ?=

.PHONY: serve test soak build rust-test py-test lint bench fuzz clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip

$(VENV)/.test-deps: requirements-test.txt | $(VENV)/bin/python
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

$(VENV)/bin/maturin: | $(VENV)/bin/python
	$(PY) -m pip install -q "maturin>=1.9.4,<2"

## build: compile the release extension and install the package into .venv
build: | $(VENV)/bin/maturin
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

## serve: serve APP (default: the demo) on LISTEN (default 127.0.0.1:8080)
serve: build
	$(PY) -m tapster --listen=$(LISTEN) $(ARGS) $(APP)

## test: cargo tests (HTTP layer and the rest of the Rust code), then pytest end to end
test: rust-test py-test

rust-test:
	cargo test --all-targets

py-test: $(VENV)/.test-deps
	./scripts/ensure-packages curl
	$(MAKE) build
	$(PY) -m pytest -q tests

## soak: a few minutes of mixed traffic with memory and descriptors sampled (CI runs it)
soak: $(VENV)/.test-deps
	$(MAKE) build
	$(PY) -m pytest -q -s soak

## lint: formatting, clippy and mypy, as CI expects them
lint: $(VENV)/.test-deps
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	$(PY) -m mypy --ignore-missing-imports python/tapster bench/run.py

## bench: the benchmark harness against the peers (never part of `make test`)
bench: build
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	cargo clean
	rm -rf $(VENV)
