#!/usr/bin/env bash
# The README's first command: build libvgpu.so, the vgpu command and the simulated driver, then show two
# "containers" sharing one simulated GPU under vgpu's limits. Needs only cargo and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "Building (the first build takes a few minutes)..."
scripts/build-artifacts.sh
echo
exec target/release/vgpu demo "$@"
