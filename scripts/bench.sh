#!/usr/bin/env bash
# Fleet benchmark: fleets of 1, 10 and 100 accounts in one process against a private local
# Synapse — mxfleet with the echo backend and, with --systems, its anchors (a bare matrix-sdk
# echo fleet and a matrix-nio echo fleet with encryption on). Prints RSS (total, per account,
# per added account), reply latency p50/p99/max, CPU per 1000 messages and idle, start-up with
# logins and with restored sessions, and mxfleet's own time per answer. Everything is a release
# build.
#
#   scripts/bench.sh                          # mxfleet at 1, 10 and 100 accounts
#   scripts/bench.sh --accounts 1,10 --messages 50
#   scripts/bench.sh --systems mxfleet,sdk-echo,nio-echo --accounts 1,10,100,1000 --plots docs/img
#   scripts/bench.sh --soak-minutes 30 --soak-accounts 100 --plots docs/img
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-synapse.sh >/dev/null
if [[ " $* " == *nio-echo* ]]; then
  nio_python=$(scripts/setup-nio.sh)
  set -- --nio-python "$nio_python" "$@"
fi
cargo build --release --locked -p mxfleet -p mxfleet-bench
exec target/release/mxfleet-bench --binary target/release/mxfleet --sdk-echo target/release/sdk-echo "$@"
