# Adit — see README.md. Every target works on a fresh Debian 12 machine with the Swift toolchain.
SWIFT ?= swift
PYTHON ?= python3
# The binary is built once, in release, with the Swift runtime and Foundation linked in (--static-swift-stdlib):
# the binary the demo, the end-to-end tests and the benchmarks run is the one that ships, and it runs where no
# toolchain is installed (only glibc, libstdc++ and zlib). The unit tests build in debug (.build/debug): a second
# release build of every dependency would cost CI minutes, and debug keeps assertions on. The debug build's
# own adit, linked dynamically, is the control of test_static_binary.py. The shipped binary skips Swift's
# run-time exclusivity checks in every module, the dependencies' too: callgrind counted them (swift_beginAccess
# and its access set) as a quarter to a third of the instructions spent relaying a 64-byte message
# (bench/callgrind.py, docs/benchmarks.md). The debug build, the unit tests and the sanitizer builds keep them,
# so a violation is still caught there.
RELEASE_FLAGS ?= -c release --static-swift-stdlib -Xswiftc -enforce-exclusivity=unchecked
ADIT_BIN ?= $(CURDIR)/.build/release/adit
DYNAMIC_BIN ?= $(CURDIR)/.build/debug/adit
# What `make test` gives fuzzing (seconds per target) and the soak (seconds); `make fuzz`/`make soak` run longer.
FUZZ_SECONDS ?= 5
SOAK_SECONDS ?= 60

.PHONY: all build demo test unit e2e deps clean fuzz fuzz-build fuzz-ci sanitize soak

all: build

build:
	$(SWIFT) build $(RELEASE_FLAGS) --product adit

## make demo: a server, a client and an echo target on loopback; pushes 512 MiB each way and verifies it.
demo: build
	$(ADIT_BIN) demo --streams 4 --megabytes 512

## make test: installs what the tests need (only when missing), builds, runs unit and end-to-end tests.
## Then each fuzz target for a few seconds (FUZZ_SECONDS) and a short soak (SOAK_SECONDS); `make fuzz` and
## `make soak` run them for real.
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	$(MAKE) fuzz-ci FUZZ_SECONDS=$(FUZZ_SECONDS)
	$(SWIFT) build $(RELEASE_FLAGS) --product adit
	ADIT_BIN=$(ADIT_BIN) ADIT_DYNAMIC_BIN=$(DYNAMIC_BIN) $(PYTHON) -m pytest -c Tests/e2e/pytest.ini Tests/e2e
	ADIT_BIN=$(ADIT_BIN) $(PYTHON) Tests/soak/soak.py --seconds $(SOAK_SECONDS)

unit:
	$(SWIFT) test

e2e: deps build
	ADIT_BIN=$(ADIT_BIN) ADIT_DYNAMIC_BIN=$(DYNAMIC_BIN) $(PYTHON) -m pytest -c Tests/e2e/pytest.ini Tests/e2e

deps:
	@PYTHON=$(PYTHON) sh Tests/e2e/ensure-deps.sh

clean:
	rm -rf .build .build-fuzz .build-asan .build-tsan

## make fuzz: every libFuzzer target (Tests/Fuzz) for FUZZ_SECONDS each (default 60), from the corpus in
## Tests/Fuzz/Corpus; FUZZ_TARGETS picks some. Its own build (.build-fuzz), instrumented for coverage.
fuzz: fuzz-build
	Tests/Fuzz/run.sh

fuzz-build:
	ADIT_FUZZ=1 $(SWIFT) build -c release --scratch-path .build-fuzz --product adit-fuzz

## make fuzz-ci: each target for FUZZ_SECONDS (5), built in debug beside the unit tests' build so that only
## Adit's own modules are compiled again (with the coverage instrumentation).
fuzz-ci:
	ADIT_FUZZ=1 $(SWIFT) build --product adit-fuzz
	FUZZ_BIN=.build/debug/adit-fuzz FUZZ_SECONDS=$(FUZZ_SECONDS) Tests/Fuzz/run.sh

## make soak: mixed traffic (bulk, interactive, churn, server restarts) for SOAK_SECONDS (default 3600) with the
## server's and the client's memory and descriptors sampled; fails if they grow or a byte is lost.
soak: deps build
	ADIT_BIN=$(ADIT_BIN) $(PYTHON) Tests/soak/soak.py --seconds $(if $(filter command line environment,$(origin SOAK_SECONDS)),$(SOAK_SECONDS),3600)

## make sanitize: the Swift test suite under AddressSanitizer, then ThreadSanitizer (each its own build).
## Leak detection is off: the unit tests leave EmbeddedChannels unfinished (their handler cycles are reported,
## about 3 MB over the run) and XCTest and Foundation leak a few hundred bytes of their own; memory errors
## (use after free, overflows) still fail the run. `make soak` is the leak check that counts.
sanitize:
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan
	ASAN_OPTIONS=detect_leaks=0 $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan
	$(SWIFT) test --skip-build --sanitize=thread --scratch-path .build-tsan


.PHONY: bench bench-quick bench-baselines bench-wan bench-instructions

bench: build
	bench/run.sh

# One stream through a user-space long fat path (1 Gbit/s x 50 ms, 100 Mbit/s x 200 ms) beside plain TCP
# through the same path, then 1,000 bulk streams' memory (bench/wan.py, about 3 min).
bench-wan: build
	python3 bench/wan.py

# Instructions per relayed 64-byte message per hop, counted by valgrind's callgrind (bench/callgrind.py).
bench-instructions: build
	@command -v valgrind >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq valgrind >/dev/null; }
	python3 bench/callgrind.py

bench-quick: build
	BENCH_QUICK=1 bench/run.sh

bench-baselines:
	BENCH_PATHS=direct,socat,ssh bench/run.sh
