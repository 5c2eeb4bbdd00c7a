# One Makefile for people and CI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# mold links much faster than the default linker; used when it is installed (`make deps` installs it).
ifneq ($(shell command -v mold 2>/dev/null),)
export RUSTFLAGS ?= -C link-arg=-fuse-ld=mold
endif
CARGO ?= cargo
APT := $(shell command -v apt-get 2>/dev/null)

.PHONY: help deps fmt fmt-check lint test test-only build bench bench-stream

help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

deps: ## Install what the tests need and lack: redis-server, redis-tools, openssl (and mold, to link faster), with apt.
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-benchmark >/dev/null || missing="$$missing redis-tools"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v mold >/dev/null || missing="$$missing mold"; \
	if [ -n "$$missing" ]; then \
	  if [ -n "$(APT)" ]; then \
	    echo "installing:$$missing"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  else echo "please install:$$missing"; fi; \
	fi; \
	command -v redis-server >/dev/null || { echo "redis-server is required by the tests"; exit 1; }

fmt: ## Format the code.
	$(CARGO) fmt --all

fmt-check: ## Check formatting.
	$(CARGO) fmt --all -- --check

lint: fmt-check ## Formatting and clippy with warnings as errors.
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

test: deps lint test-only ## Everything CI checks: deps, fmt, clippy, the whole test suite.

test-only: ## The test suite alone (unit, property, conformance, end-to-end, doc tests).
	$(CARGO) test --workspace --all-features

build: ## Release build of the tandem binary.
	$(CARGO) build --release

bench: deps ## Benchmarks: print figures and ratios, write bench/results/{latest,stream}.md.
	# One command for both, so that features unify once and neither rebuilds the other.
	$(CARGO) build --release -p tandem --bin tandem -p tandem-batch --example views_bench
	bench/run.sh
	bench/stream.sh

bench-stream: deps ## The speed layer and archiver benchmark alone (bench/results/stream.md).
	$(CARGO) build --release -p tandem --bin tandem -p tandem-batch --example views_bench
	bench/stream.sh
