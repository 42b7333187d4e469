# Adit — see README.md. Every target works on a fresh Debian 12 machine with the Swift toolchain.
SWIFT ?= swift
PYTHON ?= python3
# The binary is built once, in release, with the Swift runtime and Foundation linked in (--static-swift-stdlib):
# the binary the demo, the end-to-end tests and the benchmarks run is the one that ships, and it runs where no
# toolchain is installed (only glibc, libstdc++ and zlib). The unit tests build in debug (.build/debug): a second
# release build of every dependency would cost CI minutes, and debug keeps assertions on. The debug build's
# own adit, linked dynamically, is the control of test_static_binary.py.
RELEASE_FLAGS ?= -c release --static-swift-stdlib
ADIT_BIN ?= $(CURDIR)/.build/release/adit
DYNAMIC_BIN ?= $(CURDIR)/.build/debug/adit

.PHONY: all build demo test unit e2e deps clean

all: build

build:
	$(SWIFT) build $(RELEASE_FLAGS) --product adit

## make demo: a server, a client and an echo target on loopback; pushes 512 MiB each way and verifies it.
demo: build
	$(ADIT_BIN) demo --streams 4 --megabytes 512

## make test: installs what the tests need (only when missing), builds, runs unit and end-to-end tests.
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	$(SWIFT) build $(RELEASE_FLAGS) --product adit
	ADIT_BIN=$(ADIT_BIN) ADIT_DYNAMIC_BIN=$(DYNAMIC_BIN) $(PYTHON) -m pytest -c Tests/e2e/pytest.ini Tests/e2e

unit:
	$(SWIFT) test

e2e: deps build
	ADIT_BIN=$(ADIT_BIN) ADIT_DYNAMIC_BIN=$(DYNAMIC_BIN) $(PYTHON) -m pytest -c Tests/e2e/pytest.ini Tests/e2e

deps:
	@PYTHON=$(PYTHON) sh Tests/e2e/ensure-deps.sh

clean:
	rm -rf .build


.PHONY: bench bench-quick bench-baselines

bench: build
	bench/run.sh

bench-quick: build
	BENCH_QUICK=1 bench/run.sh

bench-baselines:
	BENCH_PATHS=direct,socat,ssh bench/run.sh
