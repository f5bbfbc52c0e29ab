#!/usr/bin/env bash
# Acceptance of libvgpu.so on a real NVIDIA GPU: one script, one table.
#
#   scripts/gpu-acceptance.sh --lib /path/libvgpu.so [--out results.json] [--device 0] [--quick]
#                             [--only 1,2,...] [--python /path/python] [--nvcc /path/nvcc]
#   scripts/gpu-acceptance.sh --sim [--lib target/release/libvgpu.so] ...   (no GPU: the simulated driver)
#
# Needs: the NVIDIA driver (libcuda.so.1, libnvidia-ml.so.1, nvidia-smi), Python 3.7+ with PyTorch (cases 1
# and 5), and where present CuPy or nvcc (case 4) and a C compiler (case 6). No Rust toolchain, no network.
# Each case runs with and without the library, every GPU process in a process group of its own with a
# timeout; the table goes to stdout, everything measured to the JSON file (default ./gpu-acceptance.json).
# Exit status: 0 all checks passed or skipped, 1 a check failed, 2 it could not start.
# The GPU is left as found: nothing is reconfigured, every process this run started is killed on exit, and
# the scratch folder (region files included) is removed. Cases and criteria: scripts/acceptance/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

usage() { sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

python=python3
sim=0
have_lib=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --python) [ $# -ge 2 ] || { usage >&2; exit 2; }; python=$2; args+=(--python "$2"); shift 2 ;;
    --python=*) python=${1#--python=}; args+=("$1"); shift ;;
    --sim) sim=1; args+=("$1"); shift ;;
    --lib|--lib=*) have_lib=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ "$have_lib" = 0 ]; then
  if [ "$sim" = 1 ]; then
    args+=(--lib "$root/target/release/libvgpu.so")
  else
    echo "gpu-acceptance: --lib /path/to/libvgpu.so is required" >&2
    usage >&2
    exit 2
  fi
fi
command -v "$python" >/dev/null 2>&1 || { echo "gpu-acceptance: no Python ($python)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/vgpu-acceptance.XXXXXX")
child=

# Kill what is left of every process group the run started (listed by run.py in $work/pgids; only
# those, by id), then remove the scratch folder with its region files.
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$child" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$child" 2>/dev/null || true
  fi
  if [ -f "$work/pgids" ]; then
    while read -r pgid; do
      case "$pgid" in ''|*[!0-9]*) continue ;; esac
      kill -KILL -- "-$pgid" 2>/dev/null || true
    done <"$work/pgids"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# In the background and waited for, so that a signal reaches the trap at once, not when Python is done.
"$python" -u "$here/acceptance/run.py" --work "$work" "${args[@]}" &
child=$!
rc=0
wait "$child" || rc=$?
child=
exit "$rc"
