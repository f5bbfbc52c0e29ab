#!/usr/bin/env bash
# The Python clients the tests drive against the simulated driver, pinned, in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check \
  "nvidia-ml-py==13.615.71" "cuda-bindings==12.9.10" "cuda-pathfinder==1.9.1" \
  "kubernetes-validate==1.37.0"
.venv/bin/python -c "import pynvml, cuda.bindings.driver" && echo "python clients: .venv"
