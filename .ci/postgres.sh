#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests: installs Debian's server if missing, creates a cluster in
# a temporary directory, starts it on a free loopback port and prints the variables to export.
#
#   eval "$(bash .ci/postgres.sh start)"   # sets REPLICATE_TEST_POSTGRES and REPLICATE_PG_DIR
#   bash .ci/postgres.sh stop "$REPLICATE_PG_DIR"
#
# The cluster trades crash safety for speed (fsync off): it only lives for one test run.
set -euo pipefail

find_bin() {
  local d
  # pg_ctl on PATH may be a link into the real bin dir, which also holds postgres and psql.
  for d in "$(readlink -f "$(command -v pg_ctl 2>/dev/null)" 2>/dev/null | xargs -r dirname)" \
           /usr/lib/postgresql/*/bin; do
    if [ -n "$d" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# Runs a PostgreSQL program as the cluster's owner: initdb and postgres refuse to run as root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  local bin
  if ! bin="$(find_bin)"; then
    echo "installing PostgreSQL from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    (apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; })
    bin="$(find_bin)"
  fi
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home postgres
  fi
  local dir port
  dir="$(mktemp -d /tmp/replicate-pg.XXXXXX)"
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  as_owner "$bin/initdb" -D "$dir/data" -U replicate --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=300" \
    start >&2 || { cat "$dir/server.log" >&2; exit 1; }
  "$( [ -x "$bin/psql" ] && echo "$bin/psql" || echo psql )" -q -h 127.0.0.1 -p "$port" -U replicate -d postgres -c 'CREATE DATABASE replicate' >&2
  echo "export REPLICATE_TEST_POSTGRES=postgres://replicate@127.0.0.1:$port/replicate"
  echo "export REPLICATE_PG_DIR=$dir"
  echo "export REPLICATE_PG_BIN=$bin"
}

stop() {
  local dir="$1" bin
  bin="${REPLICATE_PG_BIN:-$(find_bin)}"
  as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:?cluster directory}" ;;
  *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
