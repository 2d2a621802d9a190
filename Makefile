# clip: build, test, demo and benchmarks. Every target installs what it needs.
CARGO ?= cargo
PREFIX ?= /usr/local

.PHONY: all build deps test test-rust lint demo bench clean

all: build

build:
	$(CARGO) build --release

# System packages the tests and the demo use (Debian); skipped when present.
deps:
	@./scripts/deps.sh

test: deps
	$(CARGO) test --all-targets -- --test-threads=2
	$(MAKE) lint

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

demo: deps build
	./scripts/demo.sh

bench: deps build
	./scripts/bench.sh

clean:
	$(CARGO) clean
