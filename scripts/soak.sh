#!/usr/bin/env bash
# The chaos soak: a fleet on the echo backend under random faults (SIGKILL / SIGTERM / SIGSTOP of
# the fleet, network cuts and lost responses, Synapse restarts, a full disk, bursts while down),
# counted from the homeserver's history. Needs root for the disk-full fault.
#   scripts/soak.sh [--duration-secs 600] [--accounts 3] [--interval-ms 250] [--senders 2] [--seed 1]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p mxfleet -p mxfleet-testkit --bin mxfleet --bin mxfleet-soak
exec target/debug/mxfleet-soak "$@"
