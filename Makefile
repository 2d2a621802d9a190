# clip: build, test, demo and benchmarks. Every target installs what it needs.
CARGO ?= cargo
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
# Cargo profile `make install` installs from (the C tests use the test build's).
PROFILE ?= release
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))
# Where `make test-c` installs the library for the C harness.
CTEST_PREFIX ?= $(CURDIR)/target/c-prefix
# The Go package (go/) links libclip through pkg-config, as a worker image does;
# `make test-go` installs the test build into GO_PREFIX for it.
GO ?= go
GO_PREFIX ?= $(CURDIR)/target/go-prefix
GO_ENV = PKG_CONFIG_PATH=$(GO_PREFIX)/lib/pkgconfig LD_LIBRARY_PATH=$(GO_PREFIX)/lib CGO_ENABLED=1

.PHONY: all build deps test test-rust test-c test-deb test-go lint demo bench bench-abi-c header install deb clean check-beta9 fuzz

all: build

build:
	$(CARGO) build --release

# System packages the tests and the demo use (Debian); skipped when present.
deps:
	@./scripts/deps.sh

test: deps
	$(CARGO) test --all-targets -- --test-threads=2
	$(MAKE) test-c
	$(MAKE) test-deb
	$(MAKE) test-go
	$(MAKE) lint

# The C harness (tests/c/) against the installed header and library, under
# AddressSanitizer and valgrind, with a real layout, registry and FUSE mount.
test-c: deps
	$(MAKE) install PROFILE=debug PREFIX=$(CTEST_PREFIX)
	./tests/c/run.sh $(CTEST_PREFIX)

# The Debian packages (`make deb`, of the test build) unpacked into a scratch root:
# the C harness built against them through pkg-config and run.
test-deb: deps
	PROFILE=debug ./scripts/deb.sh >/dev/null
	rm -rf target/deb/root && mkdir -p target/deb/root
	for p in target/deb/libclip0_*.deb target/deb/libclip-dev_*.deb; do dpkg-deb -x $$p target/deb/root; done
	./tests/c/run.sh --deb target/deb/root

# libclip0 and libclip-dev .debs (target/deb/) for worker images; docs/GO.md shows
# the Dockerfile stages.
deb:
	./scripts/deb.sh

# The Go package against the installed library: vet, then the tests (real registry
# and FUSE) with the race detector, and again with cgocheck2 (no Go pointer kept by C).
test-go: deps
	$(MAKE) install PROFILE=debug PREFIX=$(GO_PREFIX)
	cd go && $(GO_ENV) $(GO) vet ./...
	cd go && $(GO_ENV) $(GO) test -race -count=1 ./...
	cd go && $(GO_ENV) GOEXPERIMENT=cgocheck2 $(GO) test -count=1 ./...

# A beta9 tree's worker built, vetted and tested (Clip|Archive|Metadata|Cache) against
# go/ (scripts/check-beta9.sh; not part of `make test`). BETA9_REPLACES: "MOD=PATH ..."
# (scripts/beta9-stubs.sh prints the ones beta9 0b79dfeb needs here); CLIP_PREFIX: an
# installed libclip to use instead of installing the test build into GO_PREFIX.
BETA9_DIR ?=
BETA9_REPLACES ?=
check-beta9:
	@test -n "$(BETA9_DIR)" || { echo "usage: make check-beta9 BETA9_DIR=... [BETA9_REPLACES=\"mod=path ...\"]" >&2; exit 2; }
	./scripts/check-beta9.sh $(BETA9_DIR) $(foreach r,$(BETA9_REPLACES),--replace $(r))

# Per-call overhead of the C ABI, ns per call, one line per measure.
bench-abi-c: deps
	@$(MAKE) --no-print-directory -s install PREFIX=$(CTEST_PREFIX) >/dev/null
	@./tests/c/run.sh --bench $(CTEST_PREFIX)

# Refreshes the checked-in include/clip.h from src/ffi/.
header:
	CLIP_UPDATE_HEADER=1 $(CARGO) test --test abi header_is_up_to_date

# libclip.so.$(VERSION) with the libclip.so.$(SOMAJOR) (SONAME) and libclip.so
# links, include/clip.h and clip.pc for pkg-config.
install:
	$(CARGO) build --lib $(if $(filter release,$(PROFILE)),--release,)
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR)
	install -m 0755 target/$(PROFILE)/libclip.so $(DESTDIR)$(LIBDIR)/libclip.so.$(VERSION)
	ln -sf libclip.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libclip.so.$(SOMAJOR)
	ln -sf libclip.so.$(SOMAJOR) $(DESTDIR)$(LIBDIR)/libclip.so
	install -m 0644 include/clip.h $(DESTDIR)$(INCLUDEDIR)/clip.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    clip.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/clip.pc

# Coverage-guided fuzzing (cargo-fuzz on nightly; fuzz/, a workspace of its own):
# each target of fuzz/fuzz_targets/ for SECONDS seconds, from its seed corpus in
# fuzz/corpus/<target>/ (new inputs go to target/fuzz-corpus/, crashes to
# fuzz/artifacts/). FUZZ_TARGETS picks some; a summary line per target at the end.
SECONDS ?= 60
FUZZ_TARGETS ?= $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs)))
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	cd fuzz && $(CARGO) +nightly fuzz build -O
	@mkdir -p target/fuzz-log
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t; \
	  echo "== $$t ($(SECONDS) s)"; \
	  ( cd fuzz && $(CARGO) +nightly fuzz run -O $$t ../target/fuzz-corpus/$$t corpus/$$t -- \
	      -max_total_time=$(SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 ) \
	    > target/fuzz-log/$$t.log 2>&1 || { tail -n 40 target/fuzz-log/$$t.log; exit 1; }; \
	done
	@for t in $(FUZZ_TARGETS); do \
	  printf '%-20s %12s execs  corpus %s\n' $$t \
	    "$$(sed -n 's/^stat::number_of_executed_units: *//p' target/fuzz-log/$$t.log)" \
	    "$$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' target/fuzz-log/$$t.log | tail -n 1 | cut -d' ' -f2)"; \
	done

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

demo: deps build
	./scripts/demo.sh

bench: deps build
	./scripts/bench.sh

clean:
	$(CARGO) clean
