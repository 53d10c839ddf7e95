#!/bin/sh
# Writes the homeserver's config on the first start (server name from SYNAPSE_SERVER_NAME,
# registration closed, a random shared secret kept in /data), registers the accounts named in
# SYNAPSE_USERS ("name:password name2:password2"; an existing one is left as it is) on a
# loopback-only first run, then runs Synapse. The demo stack's Synapse, not a production homeserver: see docs/operations.md.
set -eu
config=/data/homeserver.yaml
if [ ! -e "$config" ]; then
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  cat > "$config" <<YAML
server_name: "${SYNAPSE_SERVER_NAME:-localhost}"
pid_file: /data/homeserver.pid
listeners:
  - port: 8008
    bind_addresses: ['0.0.0.0']
    type: http
    tls: false
    x_forwarded: true
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: /data/homeserver.db
media_store_path: /data/media_store
signing_key_path: /data/signing.key
registration_shared_secret: "$secret"
enable_registration: false
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
YAML
  python3 -m synapse.app.homeserver --config-path "$config" --generate-keys
fi
# Waits until the Synapse on 127.0.0.1:8008 answers.
wait_up() {
  python3 - <<'PY'
import time, urllib.request
for _ in range(120):
    try:
        urllib.request.urlopen("http://127.0.0.1:8008/health", timeout=2)
        break
    except Exception:
        time.sleep(1)
PY
}
# The accounts are registered before anyone else can reach Synapse (a bot logging in before its
# account exists would be refused for good): by a first run on loopback only, once per list.
marker="/data/registered-$(printf '%s' "${SYNAPSE_USERS:-}" | sha256sum | cut -c1-16)"
if [ -n "${SYNAPSE_USERS:-}" ] && [ ! -e "$marker" ]; then
  cat > /data/loopback.yaml <<YAML
listeners:
  - port: 8008
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    resources:
      - names: [client]
        compress: false
YAML
  python3 -m synapse.app.homeserver --config-path "$config" --config-path /data/loopback.yaml &
  bootstrap=$!
  wait_up
  for pair in $SYNAPSE_USERS; do
    name=${pair%%:*}
    password=${pair#*:}
    register_new_matrix_user --config "$config" --user "$name" --password "$password" \
      --no-admin http://127.0.0.1:8008 >/dev/null 2>&1 || true
  done
  kill "$bootstrap"
  wait "$bootstrap" || true
  touch "$marker"
  echo "synapse: accounts registered" >&2
fi
exec python3 -m synapse.app.homeserver --config-path "$config"
