#!/usr/bin/env bash
# Two builds of ferry at once, idle otherwise: each `ferry serve --roles intake,worker` on a
# scratch database of its own, single-transfer requests alternating between them one at a
# time, then each one's mean posting-transaction steps (`ferry_posting_step_seconds`) and
# mean time from job commit to posting committed (`ferry_transfer_stage_seconds`).
# Running both at once makes the machine's drift hit both alike (BENCHMARKS.md, "Where the
# database's time goes").
#
#   scripts/posting-pair.sh BEFORE_BINARY AFTER_BINARY [REQUESTS]
#
# Needs psql and curl, and PostgreSQL at PGHOST/PGPORT (default 127.0.0.1:5432, user
# postgres). Drops and recreates the databases ferry_pair_before and ferry_pair_after.
set -euo pipefail
before=${1:?before binary}
after=${2:?after binary}
requests=${3:-300}
host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
declare -A binary=([before]=$before [after]=$after)
declare -A http_port=([before]=18181 [after]=18182)
declare -A api_key
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

for build in before after; do
  db=ferry_pair_$build
  url=postgres://postgres@$host:$port/$db
  psql -h "$host" -p "$port" -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
    -c "CREATE DATABASE $db"
  DATABASE_URL=$url "${binary[$build]}" migrate >/dev/null
  psql -h "$host" -p "$port" -U postgres -d "$db" -qc \
    "INSERT INTO accounts (ledger, id, currency, allow_overdraft)
     SELECT 'default', 'acct' || n, 'USD', true FROM generate_series(1, 10000) n"
  api_key[$build]=$(DATABASE_URL=$url "${binary[$build]}" api-key create --name pair \
    --scopes admin | tail -1)
  DATABASE_URL=$url FERRY_HTTP_ADDR=127.0.0.1:${http_port[$build]} RUST_LOG=error \
    "${binary[$build]}" serve --roles intake,worker >/dev/null 2>&1 &
  pids+=($!)
done
sleep 4

for i in $(seq 1 "$requests"); do
  for build in before after; do
    from=$((RANDOM % 10000 + 1))
    to=$((from % 10000 + 1))
    curl -sf -o /dev/null -X POST "http://127.0.0.1:${http_port[$build]}/v1/transfers" \
      -H "Authorization: Bearer ${api_key[$build]}" -H "Idempotency-Key: pair-$i" \
      -H 'content-type: application/json' \
      -d "{\"from_account\":\"acct$from\",\"to_account\":\"acct$to\",\"amount\":\"1.00\",\"currency\":\"USD\"}"
  done
  sleep 0.02
done
sleep 2

for build in before after; do
  echo "== $build (${binary[$build]})"
  curl -sf "http://127.0.0.1:${http_port[$build]}/metrics" | awk '
    match($0, /^ferry_posting_step_seconds_(sum|count)\{step="[a-z_]+"\}/) {
      split($0, parts, /[{}"]/); kind = ($0 ~ /_sum\{/) ? "sum" : "count"
      value[parts[3], kind] = $NF; steps[parts[3]] = 1
    }
    /^ferry_transfer_stage_seconds_(sum|count)\{stage="posting_committed"\}/ {
      if ($0 ~ /_sum\{/) stage_sum = $NF; else stage_count = $NF
    }
    END {
      for (step in steps) if (value[step, "count"] > 0) {
        mean = value[step, "sum"] / value[step, "count"] * 1000; total += mean
        printf "  %-12s %7.3f ms\n", step, mean
      }
      printf "  %-12s %7.3f ms per transaction\n", "total", total
      if (stage_count > 0)
        printf "  job commit -> posting committed: %.1f ms mean\n", stage_sum / stage_count * 1000
    }'
done
