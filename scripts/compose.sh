#!/usr/bin/env bash
# Builds the images of deploy/compose.yaml on a machine without a container registry, with
# podman: mxfleet (scripts/image.sh: the Debian base made with mmdebstrap, and a binary built
# here), then Synapse (python3-venv from Debian, matrix-synapse from PyPI) and Prometheus
# (Debian's package) on the same base. Images that exist are kept (--rebuild builds them again).
# Then bring the stack up with podman-compose (Debian's package):
#
#   scripts/compose.sh [--release | --binary PATH] [--rebuild]
#   MXFLEET_BOT_PASSWORD=… DEMO_USER_PASSWORD=… podman-compose -f deploy/compose.yaml up -d
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

image_args=()
rebuild=false
while (($#)); do
  case "$1" in
    --release) image_args+=(--release) ;;
    --binary) image_args+=(--binary "$2"); shift ;;
    --rebuild) rebuild=true ;;
    *) echo "usage: $0 [--release | --binary PATH] [--rebuild]" >&2; exit 64 ;;
  esac
  shift
done

if [ "$(id -u)" = 0 ] && ! command -v podman-compose >/dev/null; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman-compose >&2
fi
MXFLEET_IMAGE="${MXFLEET_IMAGE:-localhost/mxfleet:compose}" scripts/image.sh "${image_args[@]}"
base="localhost/mxfleet-base:bookworm"
build() {   # image, context
  if $rebuild || ! podman image exists "$1"; then
    echo "building $1" >&2
    # The host's CA bundle goes in for pip: PyPI may be behind a TLS-inspecting proxy here.
    podman build --quiet --runtime runc --format docker --network host \
      --volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro \
      --build-arg HOST_CA=/run/host-ca.crt --build-arg "BASE=$base" -t "$1" "$2" >&2
  fi
  echo "$1"
}
build "${SYNAPSE_IMAGE:-localhost/mxfleet-synapse:compose}" deploy/compose/synapse
build "${PROMETHEUS_IMAGE:-localhost/mxfleet-prometheus:compose}" deploy/compose/prometheus
