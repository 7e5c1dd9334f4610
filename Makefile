# shardwallet: build, local cluster, tests, benchmark and Docker entry points.
# `make` alone lists the targets. The local cluster (3 PostgreSQL shards + the nisshi
# broker, no Docker) is managed by scripts/cluster.sh; see its header for details.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# Prerequisites are listed in the order they must run (cluster before migrate, ...).
.NOTPARALLEL:

CARGO ?= cargo
# cargo's output dir follows CARGO_TARGET_DIR when set (Dockerfile.dev sets it).
BIN := $(or $(CARGO_TARGET_DIR),target)/release/shardwallet
CLUSTER := bash scripts/cluster.sh
COMPOSE ?= docker compose

# Where `health` looks; must match server.listen (SHARDWALLET__SERVER__LISTEN).
SERVICE_URL ?= http://127.0.0.1:8080
# cargo test's --test-threads for the first pass.
TEST_THREADS ?= 4
# Tests that load the whole machine (a 1,000-transfer storm, processes killed in turn, a
# broker of their own, a headless browser): `make test` runs them after the others, one at
# a time, so that on 2 cores no other test's deadline is spent waiting for them. The
# metrics tests run there too: the recorder is process-wide, so what moves between two
# scrapes must be the test's own doing.
HEAVY_TESTS := tcc::a_storm_of failover:: tcc_failures::two_instances \
	tcc_failures::transfers_made_while_the_broker_is_down openapi::swagger_ui metrics:: resharding::the_mover resharding::a_rebalance
# Extra arguments for `shardwallet bench`, e.g. BENCH_ARGS="--mode cross --rates 100,200,400".
BENCH_ARGS ?=
# Broker storage when `cluster-up` has to start the broker: memory (default: idle ~5% of a
# core, fastest; what a restart loses, the outbox re-drive recovers), sqlite or postgres.
BROKER_STORAGE ?= memory
export BROKER_STORAGE

.PHONY: help build cluster-up cluster-down cluster-status shard-add shards migrate testdata health verify \
	run test browser fuzz postman api-checks bench lint fmt up up-dev down

help: ## list the targets
	@echo "Usage: make TARGET [VAR=value ...]"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-15s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: BROKER_STORAGE=$(BROKER_STORAGE) TEST_THREADS=$(TEST_THREADS) SERVICE_URL=$(SERVICE_URL) BENCH_ARGS=$(BENCH_ARGS)"

# --- build -------------------------------------------------------------------

build: ## release build (target/release/shardwallet)
	$(CARGO) build --release --locked

# --- local cluster (no Docker) ----------------------------------------------

cluster-up: ## install what is missing (postgresql, the broker from tools/broker), start 3 Postgres shards + broker
	$(CLUSTER) install up

cluster-down: ## stop the local Postgres shards and the broker
	$(CLUSTER) down

cluster-status: ## show what of the local cluster runs
	$(CLUSTER) status

shard-add: build cluster-up ## start one more Postgres shard (next port) and add it to the cluster (owns no bucket yet)
	@read -r name url < <($(CLUSTER) add-shard); \
	$(BIN) shards add --name "$$name" --url "$$url"; \
	echo "next: $(BIN) reshard rebalance   (or reshard move --buckets A-B --to $$name)"

shards: build ## list the shards with their buckets, users and wallets (shardwallet shards list)
	$(BIN) shards list

# --- service -----------------------------------------------------------------

migrate: build cluster-up ## apply the migrations to every shard
	$(BIN) migrate

testdata: migrate ## migrate, then load testdata/testdata.sql users (skipped when loaded)
	$(BIN) testdata

health: ## GET /health and /ready of a running server
	@rc=0; \
	for path in /health /ready; do \
		printf 'GET %s%s: ' "$(SERVICE_URL)" "$$path"; \
		if body=$$(curl -sS --fail-with-body -m 5 "$(SERVICE_URL)$$path" 2>&1); then \
			echo "ok $$body"; \
		else \
			echo "FAILED $$body"; rc=1; \
		fi; \
	done; \
	exit $$rc

verify: build ## check the ledger across shards (non-zero exit on discrepancy)
	$(BIN) verify

run: ## install, build, cluster, migrate, test data, then mock gateways + serve: a line per step, build log in .local/logs (V=1: live)
	SHARDWALLET_BIN=$(BIN) SERVICE_URL=$(SERVICE_URL) CARGO=$(CARGO) bash scripts/run.sh

# --- tests and benchmark -----------------------------------------------------

# The suite wants a broker it may fill with throw-away topics: start it in memory
# unless one already runs (scripts/cluster.sh reuses a running broker as it is).
test: BROKER_STORAGE = memory
test: cluster-up browser ## run the whole test suite against the local cluster
	eval "$$($(CLUSTER) env)"; status=0; \
	$(CARGO) test --locked --no-fail-fast --all-targets -- --test-threads=$(TEST_THREADS) \
		$(addprefix --skip ,$(HEAVY_TESTS)) || status=$$?; \
	echo "=== the heavy tests, one at a time ==="; \
	$(CARGO) test --locked --no-fail-fast --all-targets -- --test-threads=1 $(HEAVY_TESTS) || status=$$?; \
	exit $$status

# The Swagger UI test drives Debian's chromium headless.
browser: ## install Debian's chromium when missing (for the Swagger UI test)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		sudo=; [[ $$(id -u) -eq 0 ]] || sudo=sudo; \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Checks of a running service from the outside (scripts/api-checks.sh): a service of
# their own from target/debug/shardwallet (the test build), on fresh databases.
fuzz: cluster-up ## Schemathesis against /openapi.json: no 5xx, every response as documented
	bash scripts/api-checks.sh fuzz

postman: cluster-up ## newman runs apis.json (every request has test scripts)
	bash scripts/api-checks.sh postman

api-checks: cluster-up ## fuzz and postman against one service (what CI runs)
	bash scripts/api-checks.sh all

# About 3-4 minutes with the defaults: same-shard closed loop and pgbench (20 s each), the
# cross-shard sweep (10 s steps), half capacity (10 s) and overload (30 s). The figures are
# printed at the end and written to .local/bench.json.
bench: cluster-up build migrate testdata ## serve in the background, run shardwallet bench with BENCH_ARGS, then verify
	SHARDWALLET_BIN=$(BIN) bash scripts/bench.sh $(BENCH_ARGS)

# --- code quality ------------------------------------------------------------

lint: ## cargo fmt --check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

# --- Docker (needs a Docker engine) ------------------------------------------

up: ## docker compose: 3 Postgres shards, Kafka and the service (no host ports; see up-dev)
	$(COMPOSE) -f docker-compose.yaml up -d --build

up-dev: ## docker compose with docker-compose.dev.yaml: host ports 8080, 5441-5443, 9092
	$(COMPOSE) -f docker-compose.yaml -f docker-compose.dev.yaml up -d --build

down: ## docker compose down (either of the above)
	$(COMPOSE) -f docker-compose.yaml -f docker-compose.dev.yaml down
