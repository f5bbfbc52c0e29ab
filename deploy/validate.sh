#!/usr/bin/env bash
# Validates every manifest in deploy/ against the Kubernetes API schemas, offline and strictly
# (unknown fields are errors), with kubernetes-validate (it ships the schemas). Installs the pinned
# version into the project's .venv when it is not there yet (scripts/setup-python.sh makes .venv).
# Usage: deploy/validate.sh [-k KUBERNETES_VERSION]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version=1.37.0
py="$root/.venv/bin/python"
if [ ! -x "$py" ]; then
  echo "deploy/validate.sh: $py is missing: run scripts/setup-python.sh, then deploy/validate.sh" >&2
  exit 2
fi
installed="$("$py" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true)"
if [ "$installed" != "$version" ]; then
  echo "deploy/validate.sh: installing kubernetes-validate==$version into .venv" >&2
  "$py" -m pip install --quiet "kubernetes-validate==$version"
fi
shopt -s nullglob
manifests=("$root"/deploy/*.yaml)
if [ ${#manifests[@]} -eq 0 ]; then
  echo "deploy/validate.sh: no manifests in $root/deploy" >&2
  exit 1
fi
"$root/.venv/bin/kubernetes-validate" --strict "$@" "${manifests[@]}"
echo "deploy/validate.sh: ${#manifests[@]} manifest files valid"
