#!/usr/bin/env bash
# Fuzzes a live ferry against its OpenAPI contract (docs/openapi.json, checked here to be the
# document it serves at GET /openapi.json) with Schemathesis: every operation, every check but the exceptions
# explained in .ci/schemathesis.toml, examples, coverage, fuzzing and stateful phases. Passes only with 0 server errors, 0 responses that violate the
# contract and 0 crashes (README, "Contract tests").
#
# Needs PostgreSQL and Redis as `cargo test` does. Uses the debug binary (built here if
# `cargo test` has not built it already), a database of its own (dropped before and after)
# and a free port; stops the ferry it started, by pid.
#
#   bash .ci/schemathesis.sh                 # defaults below
#   FERRY_SCHEMATHESIS_EXAMPLES=200 bash .ci/schemathesis.sh --seed 1234
#
# Extra arguments go to `schemathesis run` (e.g. `--seed N` to replay a run, whose seed
# Schemathesis prints).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
venv=${FERRY_SCHEMATHESIS_VENV:-$HOME/.cache/ferry/schemathesis-$SCHEMATHESIS_VERSION}
examples=${FERRY_SCHEMATHESIS_EXAMPLES:-100}
# Bounds the whole Schemathesis run (~1 min on 2 cores with the defaults).
time_limit=${FERRY_SCHEMATHESIS_TIMEOUT_SECS:-300}
database=${FERRY_SCHEMATHESIS_DATABASE:-ferry_schemathesis}
server=${FERRY_TEST_DATABASE_SERVER:-postgres://postgres@127.0.0.1:5432}
ferry="${CARGO_TARGET_DIR:-target}/debug/ferry"

log() { printf '\n== %s\n' "$*"; }

# A virtualenv of our own: no system-wide pip, no --break-system-packages.
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  log "installing Schemathesis $SCHEMATHESIS_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION"
fi

# A no-op after `cargo test`, which builds the binary too.
cargo build --locked --bin ferry

drop_database() {
  psql "$server/postgres" -q -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null
}

work=$(mktemp -d)
ferry_pid=
cleanup() {
  local status=$?
  if [ -n "$ferry_pid" ] && kill -0 "$ferry_pid" 2>/dev/null; then
    kill -TERM "$ferry_pid"
    # Graceful shutdown takes FERRY_SHUTDOWN_GRACE_MS at most; then make sure.
    for _ in $(seq 1 30); do kill -0 "$ferry_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$ferry_pid" 2>/dev/null || true
    wait "$ferry_pid" 2>/dev/null || true
  fi
  if [ "$status" != 0 ] && [ -s "$work/ferry.log" ]; then
    echo "--- last lines of ferry's log ---" >&2
    tail -n 40 "$work/ferry.log" >&2
  fi
  drop_database || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
# A signal (the CI step's timeout, Ctrl-C) ends the script through cleanup too.
trap 'exit 143' TERM
trap 'exit 130' INT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export DATABASE_URL="$server/$database"
export FERRY_HTTP_ADDR="127.0.0.1:$port"
export FERRY_LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn}

drop_database
# Creates and migrates the database; the key is on the last line.
key=$("$ferry" api-key create --name schemathesis --scopes admin | tail -n 1)

log "starting ferry on $FERRY_HTTP_ADDR (database $database)"
"$ferry" serve >"$work/ferry.log" 2>&1 &
ferry_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
  curl -sf -o /dev/null "$base/readyz" && break
  kill -0 "$ferry_pid" 2>/dev/null || { echo "ferry exited at start" >&2; exit 1; }
  sleep 0.5
done
curl -sf -o /dev/null "$base/readyz" || { echo "ferry did not become ready" >&2; exit 1; }
# The checked-in contract is what this ferry serves (tests/api/openapi.rs checks the same).
# Schemathesis reads the file: given the served URL it leaves out the /openapi.json operation.
if ! curl -sf "$base/openapi.json" | cmp -s - docs/openapi.json; then
  echo "docs/openapi.json differs from the served document; regenerate it with" \
    "FERRY_WRITE_OPENAPI=1 cargo test --test api openapi" >&2
  exit 1
fi

log "schemathesis: up to $examples examples per operation and phase, ${time_limit} s at most"
started=$(date +%s)
# One worker: with two, Hypothesis parses lambdas' source from two threads at once and
# CPython 3.11's ast.parse is not thread-safe there ("SystemError: AST constructor recursion
# depth mismatch", a Runtime Error in the coverage phase).
timeout --signal=TERM --kill-after=30 "$time_limit" \
  "$venv/bin/schemathesis" --config-file .ci/schemathesis.toml \
  run docs/openapi.json --url "$base" \
  --header "Authorization: Bearer $key" \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$examples" \
  --workers 1 \
  --request-timeout 20 \
  --warnings off \
  "$@"
echo "schemathesis took $(( $(date +%s) - started )) s"
# A crash would have ended the process and failed the health check below.
kill -0 "$ferry_pid" 2>/dev/null || { echo "ferry is no longer running" >&2; exit 1; }
