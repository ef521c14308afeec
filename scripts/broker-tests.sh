#!/usr/bin/env bash
# The real-broker suite: installs Tansu (a Kafka-compatible broker) when the right version is not
# already there, then runs the tests of tests/broker, which start and stop their own brokers.
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
export PATH="$HOME/.cargo/bin:$PATH"

if [[ -n "${TANSU_BIN:-}" && -x "${TANSU_BIN}" ]]; then
  :
elif command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -qx "tansu ${TANSU_VERSION}"; then
  TANSU_BIN="$(command -v tansu)"
else
  echo "installing tansu ${TANSU_VERSION} (about 10 minutes, once per machine)"
  cargo install tansu --version "${TANSU_VERSION}" --locked --features dynostore
  TANSU_BIN="$HOME/.cargo/bin/tansu"
fi
export TANSU_BIN
echo "real-broker suite against $("${TANSU_BIN}" --version)"

# The tests start brokers on their own ports; one at a time keeps the 2-core machines predictable.
cargo test --test broker -- --ignored --test-threads=1
