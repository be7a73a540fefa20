#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests that run real containers, real images
# and a real registry on loopback. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "the tests run real containers: run as root" >&2
  exit 1
fi
bash scripts/deps.sh
# integration tests drive the binaries: build them all first
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
