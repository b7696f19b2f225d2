#!/usr/bin/env bash
# schemathesis against the release replicate-server (issue 12): every operation of
# /openapi.json, once with a valid admin token and once without one; fails on a 5xx, an answer
# that breaks the document (schema, status, content type, headers), a 405 without `Allow`, a
# request over the timeout, or a server that is not healthy at the end.
#
#   bash .ci/schemathesis.sh              # builds the release binary if it is missing
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 50 per operation and phase),
# SCHEMATHESIS_SEED (default 1: CI runs are reproducible; set another to explore),
# SCHEMATHESIS_VENV (default: a cached virtualenv keyed by the requirements file),
# REPLICATE_SERVER_BIN (default $CARGO_TARGET_DIR or target, then release/replicate-server).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
SEED="${SCHEMATHESIS_SEED:-1}"
BIN="${REPLICATE_SERVER_BIN:-${CARGO_TARGET_DIR:-target}/release/replicate-server}"
REQS=.ci/requirements-schemathesis.txt

if [ -z "${REPLICATE_SERVER_BIN:-}" ]; then
  echo "== cargo build --release --bin replicate-server"
  cargo build --release --locked --bin replicate-server
fi

# The virtualenv: cached across runs, rebuilt when the pinned requirements change.
key="$(sha256sum "$REQS" | cut -c1-16)"
VENV="${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/replicate-ci/schemathesis-$key}"
if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "== virtualenv $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS"
fi
ST="$VENV/bin/schemathesis"
"$ST" --version

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

head -c 32 /dev/urandom | base64 > "$WORK/secret"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
# --max-wait-ms: a long poll (`stream?waitMs=`) answers within 200 ms, so generated waits stay
# far below the request timeout.
"$BIN" --bind "127.0.0.1:$PORT" --data "$WORK/data" --auth-secret-file "$WORK/secret" \
  --max-wait-ms 200 >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

fail() {
  echo "schemathesis.sh: $*" >&2
  echo "--- server log (last 40 lines)" >&2
  tail -n 40 "$WORK/server.log" >&2 || true
  exit 1
}

for _ in $(seq 1 100); do
  if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited at start"
  sleep 0.1
done
curl -fsS "$BASE/healthz" >/dev/null || fail "the server did not become healthy"

TOKEN="$("$BIN" token --secret-file "$WORK/secret" --sub fuzz --grant '*=admin' --ttl 1h)"
# The bearer scheme of the document gets the token; schemathesis then sends the header alone
# (an -H header would come with a generated `token` query parameter, which the server refuses
# as ambiguous).
cat >"$WORK/auth.toml" <<EOF
[auth.openapi.bearer]
bearer = "$TOKEN"
EOF

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance
TOTAL=0
run() { # run NAME [schemathesis options before `run`]...
  local name="$1"
  shift
  echo "== schemathesis: $name"
  local out="$WORK/$name.log"
  local status=0
  # `events` never ends its body (it streams as commits happen): it is checked below instead.
  # From $WORK: schemathesis keeps its example cache (.schemathesis/) in the working directory.
  (cd "$WORK" && timeout 300 "$ST" "$@" run "$BASE/openapi.json" \
    --checks "$CHECKS" \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --request-timeout 10 \
    --max-response-time 10 \
    --workers 1 \
    --exclude-path '/v1/{c}/events' \
    --output-truncate false) \
    >"$out" 2>&1 || status=$?
  # The summary, errors and failures; not the per-phase progress.
  sed -n '/ERRORS\|FAILURES\|WARNINGS\|SUMMARY/,$p' "$out"
  local cases
  cases="$(grep -Eo '[0-9]+ generated' "$out" | tail -n1 | grep -Eo '[0-9]+' || echo 0)"
  echo "$name: $cases test cases"
  TOTAL=$((TOTAL + cases))
  if [ "$status" -ne 0 ]; then
    cat "$out"
    fail "schemathesis ($name) failed with status $status"
  fi
  [ "$cases" -gt 0 ] || fail "schemathesis ($name) ran no cases"
}

run with-token --config-file "$WORK/auth.toml"
run without-token

echo "== events (not fuzzed: its body does not end)"
expect() { # expect STATUS CURL_ARGS...
  local want="$1"
  shift
  local got
  got="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true)"
  [ "$got" = "$want" ] || fail "expected $want from curl $*, got $got"
}
expect 401 "$BASE/v1/fuzz/events?cursor=0"
expect 400 -H "Authorization: Bearer $TOKEN" "$BASE/v1/fuzz/events?cursor=-1"
expect 422 -H "Authorization: Bearer $TOKEN" "$BASE/v1/fuzz/events?cursor=18446744073709551615"
headers="$(curl -s -D - -o /dev/null --max-time 2 -H "Authorization: Bearer $TOKEN" "$BASE/v1/fuzz/events?cursor=0" || true)"
grep -qi '^content-type: text/event-stream' <<<"$headers" || fail "events did not answer an event stream: $headers"

echo "== healthz after the run"
kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited during the run"
expect 200 "$BASE/healthz"
echo "schemathesis: $TOTAL test cases in all, no failures"
