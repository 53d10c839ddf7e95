#!/usr/bin/env bash
# Installs Synapse from PyPI into a virtualenv, once. Prints the venv path.
# MXFLEET_SYNAPSE_VENV overrides the location (default: ~/.cache/mxfleet/synapse-venv).
set -euo pipefail
venv="${MXFLEET_SYNAPSE_VENV:-$HOME/.cache/mxfleet/synapse-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import synapse' 2>/dev/null; then
  echo "installing Synapse into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  "$venv/bin/pip" install --quiet 'matrix-synapse' >&2
fi
echo "$venv"
