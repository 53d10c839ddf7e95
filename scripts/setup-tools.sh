#!/usr/bin/env bash
# Installs the PyPI tools the suite checks deployment files with (kubernetes-validate, which
# carries the Kubernetes OpenAPI schemas, so validation needs no cluster and no network), into a
# virtualenv, once. Prints the venv path.
# MXFLEET_TOOLS_VENV overrides the location (default: ~/.cache/mxfleet/tools-venv).
set -euo pipefail
venv="${MXFLEET_TOOLS_VENV:-$HOME/.cache/mxfleet/tools-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  "$venv/bin/pip" install --quiet 'kubernetes-validate>=1.31' >&2
fi
echo "$venv"
