#!/usr/bin/env bash
# A throwaway Synapse on loopback, for development and tests.
#
#   synapse.sh config DIR PORT [default-ratelimits]  write DIR/homeserver.yaml and keys
#   synapse.sh start DIR                             start it in the background, wait until it answers
#   synapse.sh stop DIR                              stop it
#   synapse.sh register DIR USER PASSWORD [admin]    register a user with the shared secret
#   synapse.sh db-stop DIR                           stop its PostgreSQL cluster, if it has one
#
# Rate limits are raised unless "default-ratelimits" is given. The venv comes from
# scripts/setup-synapse.sh (MXFLEET_SYNAPSE_VENV overrides its location). With
# MXFLEET_SYNAPSE_DB=postgres, `config` also creates and starts a private PostgreSQL cluster
# (Debian's postgresql package, run as the postgres user, a Unix socket in DIR/pg, no TCP) and
# points Synapse at it instead of SQLite; psycopg2-binary is added to the venv from PyPI.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$("$here/setup-synapse.sh")"
cmd="${1:?usage: synapse.sh config|start|stop|register DIR ...}"
dir="$(mkdir -p "${2:?DIR missing}" && cd "$2" && pwd)"

port_of() { sed -n 's/^  - port: \([0-9]*\)$/\1/p' "$dir/homeserver.yaml"; }
pg_bin() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -n 1; }
as_postgres() { runuser -u postgres -- "$@"; }
# Stops DIR's PostgreSQL cluster, if it has one.
db_stop() {
  if [ -d "$dir/pg/data" ]; then
    as_postgres "$(pg_bin)/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

# Creates and starts DIR's PostgreSQL cluster with a `synapse` database (C collation, as Synapse
# requires); prints the database section of homeserver.yaml.
postgres_database() {
  local bin pg="$dir/pg"
  bin="$(pg_bin)"
  [ -x "$bin/initdb" ] || { echo "PostgreSQL not installed (apt-get install postgresql)" >&2; exit 1; }
  "$venv/bin/python" -c 'import psycopg2' 2>/dev/null || "$venv/bin/pip" install --quiet psycopg2-binary >&2
  # The postgres user needs to reach its socket in DIR.
  chmod o+x "$dir"
  mkdir -p "$pg"
  chown postgres: "$pg"
  as_postgres "$bin/initdb" -D "$pg/data" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
  as_postgres "$bin/pg_ctl" -D "$pg/data" -l "$pg/postgres.log" -w \
    -o "-k $pg -c listen_addresses=''" start >/dev/null
  as_postgres "$bin/createdb" -h "$pg" -U postgres -E UTF8 --locale=C -T template0 synapse
  cat <<YAML
database:
  name: psycopg2
  args:
    user: postgres
    database: synapse
    host: "$pg"
    cp_min: 5
    cp_max: 10
YAML
}

case "$cmd" in
config)
  port="${3:?PORT missing}"
  limits="raised"; [ "${4:-}" = "default-ratelimits" ] && limits="default"
  secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  if [ "${MXFLEET_SYNAPSE_DB:-sqlite}" = "postgres" ]; then
    database="$(postgres_database)"
  else
    database="database:
  name: sqlite3
  args:
    database: \"$dir/homeserver.db\""
  fi
  cat > "$dir/homeserver.yaml" <<YAML
server_name: "localhost"
pid_file: "$dir/homeserver.pid"
public_baseurl: "http://127.0.0.1:$port/"
listeners:
  - port: $port
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
$database
log_config: "$dir/log.config"
media_store_path: "$dir/media_store"
signing_key_path: "$dir/signing.key"
registration_shared_secret: "$secret"
macaroon_secret_key: "$secret-macaroon"
form_secret: "$secret-form"
enable_registration: true
enable_registration_without_verification: true
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
url_preview_enabled: false
# Cheap password hashing: tests and benchmarks register and log in many users.
bcrypt_rounds: 4
YAML
  if [ "$limits" = "raised" ]; then
    cat >> "$dir/homeserver.yaml" <<'YAML'
rc_message: {per_second: 10000, burst_count: 10000}
rc_registration: {per_second: 10000, burst_count: 10000}
rc_registration_token_validity: {per_second: 10000, burst_count: 10000}
rc_login:
  address: {per_second: 10000, burst_count: 10000}
  account: {per_second: 10000, burst_count: 10000}
  failed_attempts: {per_second: 10000, burst_count: 10000}
rc_admin_redaction: {per_second: 10000, burst_count: 10000}
rc_joins:
  local: {per_second: 10000, burst_count: 10000}
  remote: {per_second: 10000, burst_count: 10000}
rc_joins_per_room: {per_second: 10000, burst_count: 10000}
rc_invites:
  per_room: {per_second: 10000, burst_count: 10000}
  per_user: {per_second: 10000, burst_count: 10000}
  per_issuer: {per_second: 10000, burst_count: 10000}
rc_3pid_validation: {per_second: 10000, burst_count: 10000}
rc_key_requests: {per_second: 10000, burst_count: 10000}
rc_room_creation: {per_second: 10000, burst_count: 10000}
rc_presence:
  per_user: {per_second: 10000, burst_count: 10000}
rc_delayed_event_mgmt: {per_second: 10000, burst_count: 10000}
YAML
  fi
  cat > "$dir/log.config" <<YAML
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: "$dir/homeserver.log"
    encoding: utf8
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
YAML
  "$venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --generate-keys >/dev/null
  ;;
start)
  port="$(port_of)"
  "$venv/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --daemonize
  for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$port/_matrix/client/versions" >/dev/null 2>&1; then
      echo "http://127.0.0.1:$port"
      exit 0
    fi
    sleep 0.5
  done
  echo "synapse did not answer on port $port; see $dir/homeserver.log" >&2
  exit 1
  ;;
db-stop)
  db_stop
  ;;
stop)
  if [ -f "$dir/homeserver.pid" ]; then
    pid="$(cat "$dir/homeserver.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    # Only a Synapse that outlived the wait: an exited one's pid may belong to another process.
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  db_stop
  ;;
register)
  user="${3:?USER missing}"; password="${4:?PASSWORD missing}"
  admin="--no-admin"; [ "${5:-}" = "admin" ] && admin="--admin"
    # The tool reports errors (e.g. "User ID already taken.") on stdout: show them on failure.
  if ! out="$("$venv/bin/register_new_matrix_user" -c "$dir/homeserver.yaml" -u "$user" \
      -p "$password" "$admin" "http://127.0.0.1:$(port_of)" 2>&1)"; then
    echo "$out" >&2
    exit 1
  fi

  ;;
*)
  echo "unknown command $cmd" >&2; exit 2 ;;
esac
