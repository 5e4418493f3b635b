# custody — make help lists the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: help deps deps-test soak bench-fleet bench-rewrap-100k bench-store-100k bench-vs-vault build run demo fleet fleet-down test test-short fuzz bench vectors lint clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

deps: ## Install what is missing: softhsm2, and a Vault server built once into ~/.cache/custody
	@scripts/deps.sh

build: ## Build bin/custodyd and bin/custodyctl
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/custodyd ./cmd/custodyctl

run: ## First run: install, build, init the SoftHSM token, serve on run/custodyd.sock at once (dev Vault builds in the background)
	@scripts/first-run.sh

FLEET_DIR ?= run/fleet

fleet: build ## A local fleet in FLEET_DIR (run/fleet): 3-node raft Vault, 3 custodyd on one SoftHSM token (docs/fleet.md)
	@scripts/deps.sh softhsm
	@scripts/fleet.sh up $(FLEET_DIR) 3

fleet-down: ## Stop the processes make fleet started (keeps FLEET_DIR)
	@scripts/fleet.sh down $(FLEET_DIR)

demo: build ## Register, encrypt and decrypt against a running daemon (after make run)
	@scripts/demo.sh

STATICCHECK := $(shell go env GOPATH)/bin/staticcheck
STATICCHECK_VERSION := (0.8.2)

lint: ## gofmt, go vet, builds without cgo, and staticcheck (installed once from the Go module proxy)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
# custodyctl and the formats link no C (cmd/custodyctl's TestNoCgo checks the graph); hsm's !cgo build keeps the rest compiling.
	CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/custodyctl
	CGO_ENABLED=0 $(GO) build ./...
	@$(STATICCHECK) -version 2>/dev/null | grep -q '$(STATICCHECK_VERSION)' || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	$(STATICCHECK) ./...

deps-test: ## deps, plus chromium for the report rendering test, postgresql for the store tests, zbar-tools for the QR code test
	@scripts/deps.sh test

test: deps-test lint ## The whole suite: vet, then every test with -race against SoftHSM (as root: creates test users)
	$(GO) test -race -count=1 -timeout 20m ./...

test-short: deps ## Unit tests without -race
	$(GO) test -count=1 ./...

fuzz: ## Run each fuzz target for FUZZTIME (default 30s)
	@for t in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$t/*_test.go | cut -d' ' -f2); do \
	    echo "== $$t $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} $$t || exit 1; \
	  done; done

bench: deps ## Benchmarks: socket vs raw open chain, encrypt vs software seal, leak and RSS check
	$(GO) test -run '^$$' -bench . -benchtime $${BENCHTIME:-2s} ./hsm/ ./internal/server/ ./internal/auditlog/

bench-fleet: deps ## Fleet figures of docs/fleet.md: throughput of 1-3 daemons on one token, audit-decrypt p50/p99 cluster vs dev Vault
	CUSTODY_FLEET_BENCH=1 $(GO) test -count=1 -run 'TestFleetBench' -v ./internal/fleet/ | grep -E '^\s+bench_test|^(ok|FAIL|---)'

SOAK ?= 5m

soak: deps ## Mixed traffic on a 3-daemon fleet for SOAK (5m) while daemons, Vault nodes, the token and a log disk fail; then the checks (internal/fleet TestSoak)
	CUSTODY_SOAK=$(SOAK) $(GO) test -count=1 -run 'TestSoak' -v -timeout 60m ./internal/fleet/ | grep -E '^\s+soak_test|^\s{2,}[a-z-]+ [a-z_]+: [0-9]+|^(ok|FAIL|---)'

bench-rewrap-100k: deps ## The 100,000-envelope streaming rewrap: peak RSS of custodyctl and the daemon (many minutes)
	CUSTODY_BENCH_100K=1 $(GO) test -run '^$$' -bench 'Rewrap100k' -benchtime 1x -timeout 60m ./internal/server/

bench-store-100k: deps-test ## In-place rewrap of 100,000 PostgreSQL rows vs the streaming rewrap of the same envelopes, and decrypt p99 during it, paced (about an hour)
	CUSTODY_BENCH_STORE_ROWS=100000 $(GO) test -run '^$$' -bench 'StoreRewrapVsStream' -benchtime 1x -timeout 150m ./internal/server/

bench-vs-vault: deps ## custody vs Vault transit on this machine, same load and payload (BENCH_ARGS for cmd/custodybench; README "Performance")
	@scripts/bench-vs-vault.sh

vectors: ## Regenerate the envelope known-answer vectors
	$(GO) run ./internal/envelope/internal/katgen > internal/envelope/testdata/vectors.json

clean: ## Remove build output and the socket (keeps the token and the access log in run/log)
	rm -rf bin
	rm -f run/custodyd.sock run/demo-*.json
