# Tapster: `make serve` and `make test` set up everything they need on a fresh machine
# that has the build prerequisites (`make check` names what is missing).

PYTHON  ?= python3
DEV_VENV ?= .venv
PY      := $(DEV_VENV)/bin/python
APP     ?= tapster.demo:app
LISTEN  ?= 127.0.0.1:8080
ARGS    ?=
# `make install` installs into VENV, else into the active virtualenv.
VENV    ?= $(VIRTUAL_ENV)

# What the wheel is built from: when none of these changed, `make wheel` does nothing.
WHEEL_INPUTS := Cargo.toml Cargo.lock pyproject.toml README.md \
	$(shell find src python -type f -not -name '*.pyc' -not -name '*.so' -not -path '*/__pycache__/*' 2>/dev/null)
WHEEL_STAMP  := dist/.tapster-wheel

.PHONY: check serve test soak build wheel install install-venv rust-test py-test lint bench fuzz clean

## check: the build prerequisites (Rust, a C linker, Python 3.10+ with venv); one line naming what is missing
check:
	@./scripts/check-build-prereqs $(PYTHON)

$(DEV_VENV)/bin/python: | check
	$(PYTHON) -m venv $(DEV_VENV)
	$(PY) -m pip install -q -U pip

$(DEV_VENV)/.test-deps: requirements-test.txt | $(DEV_VENV)/bin/python
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

$(DEV_VENV)/bin/maturin: | $(DEV_VENV)/bin/python
	$(PY) -m pip install -q "maturin>=1.9.4,<2"

## wheel: the release wheel in dist/ (abi3: any CPython >= 3.10; manylinux tag for this machine's glibc)
wheel: $(WHEEL_STAMP)

$(WHEEL_STAMP): $(WHEEL_INPUTS) | check $(DEV_VENV)/bin/maturin
	rm -f dist/tapster-*.whl
	$(DEV_VENV)/bin/maturin build --release --auditwheel check --out dist
	touch $@

## build: the release extension, installed into .venv as an editable package (what
## serve, test, soak and bench use; edits under python/ take effect without a rebuild)
build: | check $(DEV_VENV)/bin/maturin
	VIRTUAL_ENV=$(abspath $(DEV_VENV)) $(DEV_VENV)/bin/maturin develop --release -q

## install: the release wheel, installed into the active virtualenv (or VENV=/path/to/venv)
install: install-venv wheel
	"$(VENV)/bin/python" -m pip install -q --force-reinstall --no-deps dist/tapster-*.whl
	@echo "tapster installed into $(VENV): run \`tapster yourmodule:app\` from your project"

install-venv:
	@[ -n "$(VENV)" ] || { echo "tapster: make install needs a virtualenv: activate one (. venv/bin/activate) or pass VENV=/path/to/venv" >&2; exit 1; }
	@[ -x "$(VENV)/bin/python" ] || { echo "tapster: $(VENV) is not a virtualenv (no bin/python); create it with: python3 -m venv $(VENV)" >&2; exit 1; }

## serve: serve APP (default: the demo) on LISTEN (default 127.0.0.1:8080)
serve: build
	$(PY) -m tapster --listen=$(LISTEN) $(ARGS) $(APP)

## test: cargo tests (HTTP layer and the rest of the Rust code), then pytest end to end
test: rust-test py-test

rust-test: | check
	cargo test --all-targets

## The suites that also run over TLS (every server gets a test certificate, every client
## speaks TLS: tests/support.py). The rest test cleartext-only things (half-closed
## sockets, PROXY headers, balancers) or TLS itself (tests/test_tls.py).
TLS_SUITES = tests/test_wsgi.py tests/test_framing.py tests/test_file_wrapper.py tests/test_conformance.py tests/test_reliability.py
## The suites that also run over HTTP/2 (h2c; tests/h2_bridge.py translates the tests'
## HTTP/1.1 bytes): those of HTTP/1.1 framing itself stay HTTP/1.1 (or are `http1_only`).
H2_SUITES = tests/test_wsgi.py tests/test_file_wrapper.py tests/test_reliability.py

py-test: $(DEV_VENV)/.test-deps
	./scripts/ensure-packages curl haproxy nginx prometheus openssl nghttp2-client
	$(MAKE) build
	$(PY) -m pytest -q tests
	@echo "the WSGI behaviour suites again, over TLS:"
	TAPSTER_TEST_TRANSPORT=tls $(PY) -m pytest -q $(TLS_SUITES)
	@echo "the WSGI behaviour suites again, over HTTP/2:"
	TAPSTER_TEST_TRANSPORT=h2 $(PY) -m pytest -q $(H2_SUITES)

## soak: a few minutes of mixed traffic with memory and descriptors sampled (CI runs it)
soak: $(DEV_VENV)/.test-deps
	$(MAKE) build
	$(PY) -m pytest -q -s soak

## lint: formatting, clippy and mypy, as CI expects them
lint: $(DEV_VENV)/.test-deps
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	$(PY) -m mypy --ignore-missing-imports python/tapster bench/run.py

## bench: the benchmark harness against the peers (never part of `make test`)
bench: build
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	cargo clean
	rm -rf $(DEV_VENV) dist
