# Adit — see README.md. Every target works on a fresh Debian 12 machine with the Swift toolchain.
SWIFT ?= swift
PYTHON ?= python3
# One release build serves the demo, the unit tests, the end-to-end tests and the benchmarks.
BUILD_FLAGS ?= -c release
ADIT_BIN ?= $(CURDIR)/.build/release/adit
# The binary to ship: the Swift runtime and Foundation linked in (runs with no toolchain installed). Its own
# scratch path, because the static flag would otherwise rebuild everything the tests share.
STATIC_BIN ?= $(CURDIR)/.build-static/release/adit

.PHONY: all build static demo test unit e2e deps clean

all: build

build:
	$(SWIFT) build $(BUILD_FLAGS) --product adit

## make static: the self-contained binary (needs only glibc, libstdc++ and zlib at run time).
static:
	$(SWIFT) build -c release --product adit --static-swift-stdlib --scratch-path .build-static

## make demo: a server, a client and an echo target on loopback; pushes 512 MiB each way and verifies it.
demo: build
	$(ADIT_BIN) demo --streams 4 --megabytes 512

## make test: installs what the tests need (only when missing), builds, runs unit and end-to-end tests.
test: deps
	$(SWIFT) build $(BUILD_FLAGS) --build-tests
	$(SWIFT) test $(BUILD_FLAGS) --skip-build
	$(MAKE) static
	ADIT_BIN=$(ADIT_BIN) ADIT_STATIC_BIN=$(STATIC_BIN) $(PYTHON) -m pytest -c Tests/e2e/pytest.ini Tests/e2e

unit:
	$(SWIFT) test $(BUILD_FLAGS)

e2e: deps build
	ADIT_BIN=$(ADIT_BIN) ADIT_STATIC_BIN=$(STATIC_BIN) $(PYTHON) -m pytest -c Tests/e2e/pytest.ini Tests/e2e

deps:
	@PYTHON=$(PYTHON) sh Tests/e2e/ensure-deps.sh

clean:
	rm -rf .build .build-static


.PHONY: bench bench-quick bench-baselines

bench:
	$(SWIFT) build -c release --product adit
	bench/run.sh

bench-quick:
	$(SWIFT) build -c release --product adit
	BENCH_QUICK=1 bench/run.sh

bench-baselines:
	BENCH_PATHS=direct,socat,ssh bench/run.sh
