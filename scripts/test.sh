#!/usr/bin/env bash
# Runs mxfleet's whole test suite: unit tests and end-to-end tests against a real Synapse.
#
# Installs Synapse into a virtualenv if needed (scripts/setup-synapse.sh), kubernetes-validate
# into another (scripts/setup-tools.sh), and Debian's chromium (the status page test), bubblewrap
# (the sandboxed agent tests), systemd (the unit is verified with systemd-analyze), prometheus
# (promtool and a real scrape) and podman, runc, mmdebstrap and podman-compose (the container
# image is built and run, alone and in deploy/compose.yaml) if missing; starts one shared Synapse on a free
# loopback port with raised rate limits, runs every test in parallel with cargo-nextest (cargo
# test if it is missing), and stops Synapse again. The status page's screenshot lands in
# target/test-artifacts/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-synapse.sh >/dev/null
# kubernetes-validate (PyPI) checks the Kubernetes manifests offline.
export MXTEST_TOOLS_VENV="$(scripts/setup-tools.sh)"
# The status page is tested in headless Chromium, sandboxed command agents under bubblewrap, the
# systemd unit with systemd-analyze, the metrics with promtool and Prometheus, the image with
# podman (Debian's packages).
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v promtool >/dev/null || missing+=(prometheus)
for tool in podman runc mmdebstrap podman-compose; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "${missing[*]} missing and cannot be installed (no root): their tests fail or skip" >&2
  fi
fi
echo "==> building"
cargo build --workspace --all-targets --locked

synapse_dir="$(mktemp -d -t mxfleet-synapse-XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cleanup() { scripts/synapse.sh stop "$synapse_dir" || true; rm -rf "$synapse_dir"; }
trap cleanup EXIT
scripts/synapse.sh config "$synapse_dir" "$port"
export MXTEST_HOMESERVER="$(scripts/synapse.sh start "$synapse_dir")"
export MXTEST_SYNAPSE_DIR="$synapse_dir"
echo "==> shared Synapse at $MXTEST_HOMESERVER"

echo "==> testing"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --profile ci "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
