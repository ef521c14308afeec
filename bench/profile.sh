#!/usr/bin/env bash
# CPU profile of the bridge: bench/profile.sh [spool|direct|drain|half] [SECONDS] [RATE] (see bench/profile.py).
# Needs perf (Debian: linux-perf) able to sample cpu-clock; writes bench/results/profile-MODE.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v perf >/dev/null || { echo "perf missing: apt-get install linux-perf" >&2; exit 1; }
[[ -x bench/.venv/bin/python ]] || { echo "run bench/run.sh once first (it creates bench/.venv)" >&2; exit 1; }
mkdir -p bench/.work
if [[ -z "${BRIDGE_BIN:-}" ]]; then
  cargo build --release --bin rc-kafka-bridge
  BRIDGE_BIN="$PWD/target/release/rc-kafka-bridge"
fi
export BRIDGE_BIN TANSU_BIN="${TANSU_BIN:-$(command -v tansu)}"
rustc -O --edition 2021 -o bench/.work/loadgen bench/loadgen.rs
exec bench/.venv/bin/python bench/profile.py "$@"
