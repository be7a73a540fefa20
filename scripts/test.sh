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
status=0
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}" || status=$?
# the CRI suite again with the project's own shim and runtime (rshim + runr) in place of
# Debian's runc shim
RCD_TEST_CRI_SHIM="$PWD/target/$(rustc --print host-tuple)/debug/containerd-shim-runr-v2" \
  cargo test -p rcd --test cri -- --test-threads="${TEST_THREADS:-4}" || status=$?
exit "$status"
