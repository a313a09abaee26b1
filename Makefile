# raftkv — see README.md. `make cluster` then `make test`.
SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release/raftkv
CTL := target/release/raftkvctl
ENDPOINTS ?= 127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003
# A cluster started with `make cluster TLS=1`: raftkvctl talks TLS with its
# CA and the admin token (the targets below that call it need both).
ifneq ($(wildcard .cluster/tls/ca.pem),)
export RAFTKV_CACERT := .cluster/tls/ca.pem
export RAFTKV_TOKEN := $(shell cat .cluster/admin.token 2>/dev/null)
endif

.PHONY: help build cluster stop kill-leader add-node remove-node clean-cluster test test-tls unit sim mutation-check mutants

help:
	@echo "make cluster   build (release) and start a local 3-node cluster in the background"
	@echo "make cluster TLS=1   the same with TLS, mutual TLS between members and an admin token (.cluster/admin.token)"
	@echo "make stop      stop the processes 'make cluster' started"
	@echo "make kill-leader   kill -9 the leader ('make cluster' restarts it)"
	@echo "make add-node N=4  start node 4 (config/node4.toml), which joins as a learner, and promote it"
	@echo "make remove-node N=4   remove member 4 from the cluster and stop it"
	@echo "make test      run the whole test suite, then the black-box tests again with TLS and tokens (installs iptables/promtool/openssl/chromium if missing)"
	@echo "make test-tls  only the black-box and chaos tests with TLS and tokens on"
	@echo "make schemathesis   fuzz the HTTP API against openapi.json on a cluster of its own (part of make test)"
	@echo "make sim SIM_SEEDS=20000   run the deterministic simulation on more seeds"
	@echo "make mutation-check   the five planted rule violations must each be caught"
	@echo "make mutants   cargo-mutants over src/raft (hours; MUTANTS_ARGS='--shard 1/8' for a slice)"

build:
	$(CARGO) build --release --bins

cluster: build
	@scripts/cluster.sh start

stop:
	@scripts/cluster.sh stop

kill-leader:
	@scripts/cluster.sh kill-leader

N ?= 4
add-node: build
	@scripts/cluster.sh add $(N)

remove-node: build
	@scripts/cluster.sh remove $(N)

clean-cluster: stop
	rm -rf .cluster

# The whole suite: unit tests, the seeded simulation, black-box tests of
# real processes. Uses cargo-nextest when present (parallel processes),
# cargo test otherwise.
test:
	@scripts/install-deps.sh test
	$(CARGO) build --release --workspace --bins --tests
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --release --workspace --no-fail-fast; \
	else \
		$(CARGO) test --release --workspace --no-fail-fast; \
	fi
	@$(MAKE) --no-print-directory test-tls
	@$(MAKE) --no-print-directory schemathesis

# Schemathesis fuzzes the API against openapi.json on a cluster of its own
# (installs schemathesis from PyPI into target/st-venv the first time).
.PHONY: schemathesis
schemathesis:
	@scripts/install-deps.sh test
	$(CARGO) build --release --bin raftkv
	scripts/schemathesis.sh

# The black-box and chaos tests again, every cluster with TLS (mutual
# between members) and client tokens on (RAFTKV_TEST_TLS=1).
test-tls:
	@scripts/install-deps.sh test
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		RAFTKV_TEST_TLS=1 $(CARGO) nextest run --release --workspace --no-fail-fast -E 'kind(test) - binary(bench)'; \
	else \
		RAFTKV_TEST_TLS=1 $(CARGO) test --release --workspace --no-fail-fast --tests; \
	fi

# Each patch in scripts/mutations/ breaks one safety rule; the unit tests or
# the simulation must catch every one (runs on a scratch worktree of HEAD).
mutation-check:
	scripts/mutation-check.sh

# Generic mutations of the consensus rules by cargo-mutants (not CI: hours
# on 2 cores). Settings in .cargo/mutants.toml; results in mutants.out/.
MUTANTS_ARGS ?=
mutants:
	@$(CARGO) mutants --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-mutants
	$(CARGO) mutants $(MUTANTS_ARGS)

unit:
	$(CARGO) test --release -p raftkv --lib

sim:
	SIM_SEEDS=$${SIM_SEEDS:-10000} $(CARGO) test --release -p raftkv --test simulation -- --nocapture

# Per-actor logging of the running local cluster, switched without restart
# (see README "Logs"). PEER=3 narrows replication tracing to one peer.
.PHONY: trace-election trace-replication trace-storage quiet log
trace-election: build
	$(CTL) --endpoints $(ENDPOINTS) log set 'info,raftkv::election=trace'
trace-replication: build
	$(CTL) --endpoints $(ENDPOINTS) log set 'info,raftkv::replication$(if $(PEER),::$(PEER))=trace'
trace-storage: build
	$(CTL) --endpoints $(ENDPOINTS) log set 'info,raftkv::storage=debug'
quiet: build
	$(CTL) --endpoints $(ENDPOINTS) log set info
log: build
	$(CTL) --endpoints $(ENDPOINTS) log get

# Fault injection against real clusters with a linearizability check
# (needs root for iptables). Examples:
#   make chaos CHAOS_ARGS="--time 300 --nodes 5 --faults all --seed 7"
#   make chaos CHAOS_ARGS="--faults partitions --unsafe-planted-bug local-reads"   # must FAIL
CHAOS_ARGS ?= --time 60 --nodes 3 --faults all
.PHONY: chaos
chaos: build
	@scripts/install-deps.sh test
	target/release/raftkv-chaos $(CHAOS_ARGS)

# raftkv vs etcd (Debian etcd-server) on this machine with wrk, then the
# soak (SOAK_MINUTES of PUT load: RSS and disk over time); both append their
# results to BENCHMARKS.md. BENCH_QUICK=1 for a short raftkv-bench run.
# `make soak` runs the soak alone; raftkv-soak also has `restart`,
# `catchup` and `join` (see tools/src/bin/raftkv-soak.rs).
SOAK_MINUTES ?= 20
.PHONY: bench soak
bench: build
	@scripts/install-deps.sh bench
	target/release/raftkv-bench
	target/release/raftkv-soak soak --minutes $(SOAK_MINUTES)

soak: build
	@scripts/install-deps.sh bench
	target/release/raftkv-soak soak --minutes $(SOAK_MINUTES)
