# cachesync — see README.md.
SHELL := /bin/bash
GO ?= go
BIN := bin/cachesync
MYSQL_PORT ?= 33306
REDIS_PORT ?= 36379
KAFKA_PORT ?= 39092
REDIS_MODE ?= standalone
REDIS_CLUSTER_PORT ?= 37001
export CACHESYNC_DEV_MYSQL_PORT := $(MYSQL_PORT)
export CACHESYNC_DEV_REDIS_MODE := $(REDIS_MODE)
export CACHESYNC_DEV_REDIS_CLUSTER_PORT := $(REDIS_CLUSTER_PORT)
export CACHESYNC_DEV_REDIS_PORT := $(REDIS_PORT)
export CACHESYNC_DEV_KAFKA_PORT := $(KAFKA_PORT)
export GO

.PHONY: run stop test bench build lint fmt tidy-check deps

build:
	$(GO) build -o $(BIN) ./cmd/cachesync
	$(GO) build -o bin/devkafka ./cmd/devkafka

deps:
	scripts/deps.sh

## run: start private MariaDB + Redis + Kafka (devkafka), load the demo schema, run the daemon in the background.
## REDIS_MODE=cluster starts a 6-node Redis Cluster instead of Redis (scripts/redis-cluster.sh) and runs the daemon on it.
run: build
	scripts/dev-up.sh
	scripts/demo.sh

## stop: stop what `make run` started.
stop:
	scripts/dev-down.sh

## test: install servers if missing, lint, then run every test (race detector on), then the
## suites that can run on either once more on a private Redis Cluster (CLUSTER_SUITES).
## go test starts the packages' test binaries in the order of its command line (./... expands
## in path order; a package named twice runs once), -p (the CPU count) at a time: the longest
## packages come first (SLOW_FIRST), so that none of them starts last while the other slots idle.
SLOW_FIRST ?= ./cmd/cachesync ./seckill ./pipeline
CLUSTER_SUITES ?= ./seckill ./pipeline ./cache
test: deps lint
	CI=$${CI:-true} $(GO) test -race -count=1 -timeout 20m $(SLOW_FIRST) ./...
	CI=$${CI:-true} CACHESYNC_TEST_REDIS_MODE=cluster $(GO) test -race -count=1 -timeout 20m $(CLUSTER_SUITES)

## bench: CDC apply rate and CPU per row vs raw go-mysql parse and a plain pipelined-SET floor, and latency; the cache
## consistency harness; GET /goods/{id} with L1 vs L2 vs DB; reservations vs
## redis-benchmark EVALSHA and SELECT … FOR UPDATE. Tables in .dev/.
bench: build
	scripts/deps.sh bench
	mkdir -p .dev
	$(GO) run ./cmd/cachesync-bench -out .dev/bench-cdc.md
	$(GO) run ./cmd/cachesync-bench consistency -out .dev/bench-consistency.md
	$(GO) run ./cmd/cachesync-bench http -out .dev/bench-http.md
	$(GO) run ./cmd/cachesync-bench seckill -out .dev/bench-seckill.md
	$(GO) run ./cmd/cachesync-bench memory -out .dev/bench-memory.md -timeline .dev/bench-memory-rss.csv

## lint: gofmt, go vet and staticcheck (a tool dependency in go.mod).
lint:
	gofmt -l . | (! grep .) || (echo "gofmt needed"; exit 1)
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

fmt:
	gofmt -w .

tidy-check:
	$(GO) mod tidy && git diff --exit-code go.mod go.sum
