#!/usr/bin/env bash
# The load benchmark, end to end: builds the release binary and the load generator, installs what is
# missing (wrk, fio; Tansu like scripts/broker-tests.sh; a venv with aiohttp and confluent-kafka), then
# runs bench/bench.py, which starts Tansu on a free loopback port and measures every mode in one run.
# Results: bench/results/latest.json (and a summary on stdout). See BENCHMARKS.md.
#
# Knobs (environment): LOAD_SECONDS=20 HALF_SECONDS=20 SOAK_SECONDS=90 (600 for the 10-minute soak)
# CONNECTIONS=64 WRK_THREADS=1 DRAIN_COUNT=100000 DRAIN_ROUNDS=3 DELIVERY_ROUNDS=2
# SKIP=soak,naive,durability,drain BRIDGE_BIN=path (skip the build)
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
export PATH="$HOME/.cargo/bin:$PATH"

missing=()
for tool in wrk fio; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

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

if [[ ! -x bench/.venv/bin/python ]]; then
  python3 -m venv bench/.venv
fi
bench/.venv/bin/pip install -q -r bench/requirements.txt
# Tansu needs librdkafka >= 2.1 (Debian's 2.0 cannot talk to it); the wheel bundles its own.
bench/.venv/bin/python - <<'PY'
import confluent_kafka
version = confluent_kafka.libversion()[0]
major, minor = (int(x) for x in version.split(".")[:2])
assert (major, minor) >= (2, 1), f"confluent-kafka bundles librdkafka {version}; 2.1 or newer is needed"
PY

mkdir -p bench/.work
if [[ -z "${BRIDGE_BIN:-}" ]]; then
  cargo build --release --bin rc-kafka-bridge
  BRIDGE_BIN="$PWD/target/release/rc-kafka-bridge"
fi
export BRIDGE_BIN
rustc -O --edition 2021 -o bench/.work/loadgen bench/loadgen.rs
export LOADGEN_BIN="$PWD/bench/.work/loadgen"
BENCH_COMMIT="${BENCH_COMMIT:-$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo '+dirty')}"
export BENCH_COMMIT

exec bench/.venv/bin/python bench/bench.py
