#!/usr/bin/env bash
# Runs a real local fleet: a Synapse on loopback, a bot account and a human account, a dev config
# with the built-in echo backend, and mxfleet itself. Everything lives in .dev/ (git-ignored) and
# is reused on the next run. Ctrl-C stops mxfleet and Synapse.
#
# MXFLEET_DEV_PORT picks the Synapse port (default 8008).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

port="${MXFLEET_DEV_PORT:-8008}"
dev="$PWD/.dev"
mkdir -p "$dev"

scripts/setup-synapse.sh >/dev/null
if [ ! -f "$dev/synapse/homeserver.yaml" ]; then
  echo "==> writing a Synapse config in $dev/synapse (port $port)"
  scripts/synapse.sh config "$dev/synapse" "$port"
fi
echo "==> starting Synapse"
url="$(scripts/synapse.sh start "$dev/synapse")"
trap 'echo "==> stopping Synapse"; scripts/synapse.sh stop "$dev/synapse"' EXIT

register() {
  local out
  if ! out="$(scripts/synapse.sh register "$dev/synapse" "$1" "$2" 2>&1)"; then
    grep -q "already taken\|already exists\|User ID already" <<<"$out" || { echo "$out" >&2; exit 1; }
  fi
}
register bot bot-dev-password
register human human-dev-password

cat > "$dev/mxfleet.toml" <<TOML
# Written by scripts/dev-fleet.sh; see docs/configuration.md for every key.
data_dir = "$dev/data"

[accounts.bot]
homeserver = "$url"
user_id = "@bot:localhost"
password = "bot-dev-password"
backend = "echo"
# Only the dev human may DM the bot; in rooms it answers when mentioned.
dm_policy = "allowlist"
user_allowlist = ["@human:localhost"]
room_policy = "open"
mention_mode = "mention"
TOML


echo "==> building mxfleet"
cargo build -p mxfleet --locked --quiet
cat <<MSG

  mxfleet is starting with one bot, @bot:localhost, answering with the echo backend.

  Talk to it from any Matrix client (Element desktop, nheko, gomuks, ...):
    homeserver  $url
    user        human
    password    human-dev-password
  then start a direct chat with @bot:localhost and say something.

  Status: target/debug/mxfleet --config $dev/mxfleet.toml status
  Stop:   Ctrl-C

MSG
target/debug/mxfleet --config "$dev/mxfleet.toml" run
