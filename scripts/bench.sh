#!/usr/bin/env bash
# Fleet benchmark: 1, 10 and 100 accounts in one mxfleet process against a private local
# Synapse with the echo backend. Prints RSS (total and per account), reply latency p50/p99/max
# (user sends → the user's client receives the reply) and start-up time with logins and with
# restored sessions. Both mxfleet and the benchmark driver are release builds.
#
#   scripts/bench.sh                          # 1, 10 and 100 accounts, 100 messages each
#   scripts/bench.sh --accounts 1,10 --messages 50
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-synapse.sh >/dev/null
cargo build --release --locked -p mxfleet -p mxfleet-bench
exec target/release/mxfleet-bench --binary target/release/mxfleet "$@"
