#!/usr/bin/env bash
# Smoke check: the smoke program against the simulated driver, without and with libvgpu.so and a
# 1 GiB limit. Needs target/release/libvgpu.so and target/sim (scripts/build-artifacts.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O1 -o "$work/alloc_limit" "$root/shim-c/smoke/alloc_limit.c" -ldl
export LD_LIBRARY_PATH=${SIMDIR:-$root/target/sim} SIMGPU_STATE="$work/machine.state"
echo "== without libvgpu"
"$work/alloc_limit" | tail -4
echo "== with libvgpu, CUDA_DEVICE_MEMORY_LIMIT=1g"
CUDA_DEVICE_MEMORY_LIMIT=1g CUDA_DEVICE_MEMORY_SHARED_CACHE="$work/region.cache" LIBCUDA_LOG_LEVEL=${LIBCUDA_LOG_LEVEL:-3} \
    LD_PRELOAD="$root/target/release/libvgpu.so" "$work/alloc_limit"
