#!/usr/bin/env bash
# Installs matrix-nio with its encryption extras (vodozemac) from PyPI into a virtualenv, once,
# for the benchmark's matrix-nio anchor (crates/mxfleet-bench/anchors/nio_echo.py). Prints the
# venv's python.
# MXFLEET_NIO_VENV overrides the location (default: ~/.cache/mxfleet/nio-venv).
set -euo pipefail
venv="${MXFLEET_NIO_VENV:-$HOME/.cache/mxfleet/nio-venv}"
if ! "$venv/bin/python" -c 'from nio.crypto import ENCRYPTION_ENABLED; assert ENCRYPTION_ENABLED' 2>/dev/null; then
  echo "installing matrix-nio[e2e] into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  "$venv/bin/pip" install --quiet 'matrix-nio[e2e]==0.26.0' >&2
fi
echo "$venv/bin/python"
