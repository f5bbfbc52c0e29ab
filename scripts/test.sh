#!/usr/bin/env bash
# The README's test command: build the artifacts, set up the Python clients, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-artifacts.sh
scripts/setup-python.sh
cargo test --workspace --release --no-fail-fast -- --test-threads "${VGPU_TEST_THREADS:-4}"
