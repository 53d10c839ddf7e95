#!/usr/bin/env bash
# Builds the mxfleet container image on a machine without a container registry, with podman:
# a Debian bookworm base made from Debian's packages (mmdebstrap → podman import, once; it has
# ca-certificates, libsqlite3-0 and tini), then deploy/Containerfile's `prebuilt` target around a
# binary built here. Prints the image name.
#
#   scripts/image.sh                  cargo build (debug) and package target/debug/mxfleet
#   scripts/image.sh --release        the same with a release build (~20 min from scratch)
#   scripts/image.sh --binary PATH    package PATH as it is
#
# MXFLEET_IMAGE names the image (default localhost/mxfleet:dev). Installs podman, runc and
# mmdebstrap with apt-get when run as root and they are missing. podman runs with runc and no
# default ulimits here (crun refuses some machines' rlimits); run the image the same way:
#   podman run --runtime runc --network host -v ./config:/etc/mxfleet:ro -v mxfleet-data:/var/lib/mxfleet localhost/mxfleet:dev
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

image="${MXFLEET_IMAGE:-localhost/mxfleet:dev}"
base="localhost/mxfleet-base:bookworm"
binary=""
profile=debug
while (($#)); do
  case "$1" in
    --release) profile=release ;;
    --binary) binary="$2"; shift ;;
    *) echo "usage: $0 [--release | --binary PATH]" >&2; exit 64 ;;
  esac
  shift
done

# One build at a time (the suite builds images from parallel tests): the base image and
# containers.conf are set up once.
exec 9>"${TMPDIR:-/tmp}/mxfleet-image.lock"
flock 9

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  else
    echo "missing ${missing[*]}: install them (Debian packages)" >&2
    exit 1
  fi
fi
if [ "$(id -u)" = 0 ] && ! grep -qs '^default_ulimits' /etc/containers/containers.conf; then
  mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >> /etc/containers/containers.conf
fi

work="$(mktemp -d -t mxfleet-image-XXXXXX)"
trap 'rm -rf "$work"' EXIT
if ! podman image exists "$base"; then
  echo "building the base image $base from Debian packages" >&2
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,libsqlite3-0,tini \
    bookworm "$work/base.tar" >&2
  podman import --quiet "$work/base.tar" "$base" >&2
  rm -f "$work/base.tar"
fi

if [ -z "$binary" ]; then
  flag=(); [ "$profile" = release ] && flag=(--release)
  cargo build --locked -p mxfleet "${flag[@]}" >&2
  binary="${CARGO_TARGET_DIR:-target}/$profile/mxfleet"
fi
mkdir "$work/context"
cp "$binary" "$work/context/mxfleet"
podman build --quiet --runtime runc --format docker --network host \
  -f deploy/Containerfile --target prebuilt --build-arg "BASE=$base" \
  -t "$image" "$work/context" >&2
echo "$image"
