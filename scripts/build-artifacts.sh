#!/usr/bin/env bash
# Builds what the tests and the demo run: target/release/libvgpu.so, the vgpu command, and the simulated
# driver laid out under target/sim/ with the names programs look for.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --lib --bins
sim=target/sim
mkdir -p "$sim"
# Copy, then rename: a test or demo still running keeps its old inode.
install_as() { cp "$1" "$sim/.$2.tmp" && mv -f "$sim/.$2.tmp" "$sim/$2"; }
install_as target/release/libcuda.so libcuda.so.1
install_as target/release/libnvidia_ml.so libnvidia-ml.so.1
# cudarc tries libcuda.so before libcuda.so.1; some NVML clients open libnvidia-ml.so.
ln -sfn libcuda.so.1 "$sim/libcuda.so"
ln -sfn libnvidia-ml.so.1 "$sim/libnvidia-ml.so"
echo "artifacts: target/release/libvgpu.so, $sim/"
