#!/usr/bin/env bash
# Analyst SQL over the Postgres wire (issue #31): one profile aggregation over the lake's events,
# run three ways on the same Parquet files and the same cores — through `tandem sql serve` with
# psql, with `tandem sql -e`, and in DuckDB — each writing every row of the result as CSV to
# /dev/null. Prints the medians and the wire's overhead; writes bench/results/sql.md.
#
#   EVENTS=10000000 BENCH_RUNS=3 bench/sql.sh
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=$(git describe --always --dirty=+uncommitted 2>/dev/null || echo unknown)
EVENTS="${EVENTS:-10000000}"
RUNS="${BENCH_RUNS:-3}"
BIN="${CARGO_TARGET_DIR:-target}/release/tandem"
WORK="${BENCH_DIR:-$(mktemp -d /tmp/tandem-bench-sql.XXXXXX)}"
OUT=bench/results/sql.md
USERS=$(( EVENTS / 110 + 1 ))
[ -x "$BIN" ] || { echo "build first: make bench"; exit 1; }
command -v psql >/dev/null || { echo "psql is missing: make deps"; exit 1; }
python3 -c "import duckdb" 2>/dev/null || pip install --quiet duckdb
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }

echo "== tandem sql bench: $EVENTS events, median of $RUNS runs, $(nproc) cores =="
"$BIN" generate --users "$USERS" --days 30 --seed 1 --end 2026-11-01T00:00:00Z --events "$EVENTS" \
  --lake "file://$WORK/lake" --set log.level=warn > /dev/null

# The query: a profile per user over every stored event. The same text in all three (DuckDB
# reads the same files with the date partition).
read -r -d '' Q <<'SQL' || true
SELECT user_id,
       count(*) AS events,
       count(*) FILTER (WHERE kind = 'purchase') AS purchases,
       sum(price * quantity) FILTER (WHERE kind = 'purchase') AS spend,
       count(DISTINCT item_id) AS items,
       min(ts) AS first_ts,
       max(ts) AS last_ts
FROM events_all
GROUP BY user_id
SQL

KEY=bench-analyst-key-0123456789
PORT=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
cat > "$WORK/tandem.toml" <<TOML
[server]
api_keys = [{ name = "bench", key = "$KEY", scopes = ["sql"] }]
TOML
# Two servers: one whose session memory (8 GiB) holds the whole query as the CLI's unbounded
# pool does — the protocol's cost alone — and one at the default sql.memory_limit_mib (2 GiB),
# below this query's peak (~2.4 GiB here), where the aggregation adapts to the limit.
PORT2=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
"$BIN" sql serve --config "$WORK/tandem.toml" --lake "file://$WORK/lake" --listen "127.0.0.1:$PORT" \
  --set log.level=warn --set sql.memory_limit_mib=8192 2> "$WORK/serve.log" &
SERVER=$!
"$BIN" sql serve --config "$WORK/tandem.toml" --lake "file://$WORK/lake" --listen "127.0.0.1:$PORT2" \
  --set log.level=warn 2> "$WORK/serve2.log" &
SERVER2=$!
trap 'kill $SERVER $SERVER2 2>/dev/null; rm -rf "$WORK"' EXIT
for p in "$PORT" "$PORT2"; do
  for _ in $(seq 100); do
    PGPASSWORD=$KEY psql -h 127.0.0.1 -p "$p" -U bench -d tandem -Atc 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.2
  done
done

wire=(); wire2=(); cli=(); duck=(); rows_wire=0; rows_cli=0; rows_duck=0
for _ in $(seq "$RUNS"); do
  t0=$(now)
  PGPASSWORD=$KEY psql -h 127.0.0.1 -p "$PORT2" -U bench -d tandem -X -q -A -t -F , -c "$Q" > /dev/null
  t1=$(now); wire2+=("$(echo "$t1 - $t0" | bc -l)")
  t0=$(now)
  rows_wire=$(PGPASSWORD=$KEY psql -h 127.0.0.1 -p "$PORT" -U bench -d tandem -X -q -A -t -F , \
    -c "$Q" | wc -l)
  t1=$(now); wire+=("$(echo "$t1 - $t0" | bc -l)")
  t0=$(now)
  rows_cli=$("$BIN" sql --lake "file://$WORK/lake" --format csv -e "$Q" --set log.level=warn | tail -n +2 | wc -l)
  t1=$(now); cli+=("$(echo "$t1 - $t0" | bc -l)")
  read -r secs rows_duck < <(python3 - "$WORK/lake" "$Q" <<'PY'
import sys, time, duckdb
lake, q = sys.argv[1], sys.argv[2]
t0 = time.time()
con = duckdb.connect()
con.execute(f"SET threads = {__import__('os').cpu_count()}")
con.execute(f"CREATE VIEW events_all AS SELECT * FROM read_parquet('{lake}/events/**/*.parquet', hive_partitioning = true)")
con.execute(f"COPY ({q}) TO '/dev/null' (FORMAT csv, HEADER)")
print(time.time() - t0, "-")
PY
)
  duck+=("$secs")
done
rows_duck=$(python3 - "$WORK/lake" "$Q" <<'PY'
import sys, duckdb
lake, q = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute(f"CREATE VIEW events_all AS SELECT * FROM read_parquet('{lake}/events/**/*.parquet', hive_partitioning = true)")
print(con.execute(f"SELECT count(*) FROM ({q})").fetchall()[0][0])
PY
)
W=$(printf '%s\n' "${wire[@]}" | median)
W2=$(printf '%s\n' "${wire2[@]}" | median)
C=$(printf '%s\n' "${cli[@]}" | median)
D=$(printf '%s\n' "${duck[@]}" | median)
printf 'profile aggregation: wire %.2f s (%.2f s at the default 2 GiB session), tandem sql -e %.2f s, DuckDB %.2f s; wire/CLI %.3f (%.3f), wire/DuckDB %.2f (rows %s / %s / %s)\n' \
  "$W" "$W2" "$C" "$D" "$(echo "$W/$C" | bc -l)" "$(echo "$W2/$C" | bc -l)" "$(echo "$W/$D" | bc -l)" "$rows_wire" "$rows_cli" "$rows_duck"
[ "$rows_wire" = "$rows_cli" ] && [ "$rows_cli" = "$rows_duck" ] || { echo "ROW COUNT MISMATCH"; exit 1; }

mkdir -p bench/results
cat > "$OUT" <<MD
# Analyst SQL benchmark (issue #31)

Written by \`make bench\` (bench/sql.sh) on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores,
commit $COMMIT. Median of $RUNS runs; $EVENTS generated events in one lake.

One profile aggregation (per user: events, purchases, spend, distinct items, first and last
time) over \`events_all\`, every row of the result written as CSV and thrown away: through
\`tandem sql serve\` with \`psql -A -F ,\` (the Postgres wire, text rows), with
\`tandem sql -e … --format csv\`, and in DuckDB (\`COPY … TO '/dev/null'\`) over the same Parquet
files, same cores. Each includes its process start.

| path | seconds | rows |
|---|---|---|
| Postgres wire (\`tandem sql serve\` + psql), session memory 8 GiB | $(printf '%.2f' "$W") | $rows_wire |
| the same at the default \`sql.memory_limit_mib\` (2 GiB, below the query's peak) | $(printf '%.2f' "$W2") | $rows_wire |
| \`tandem sql -e\` | $(printf '%.2f' "$C") | $rows_cli |
| DuckDB | $(printf '%.2f' "$D") | $rows_duck |

| ratio | value | target |
|---|---|---|
| wire / \`tandem sql -e\` | $(printf '%.3f' "$(echo "$W/$C" | bc -l)") | ≤ 1.10 |
| wire at 2 GiB / \`tandem sql -e\` | $(printf '%.3f' "$(echo "$W2/$C" | bc -l)") | (the memory bound's cost) |
| wire / DuckDB | $(printf '%.2f' "$(echo "$W/$D" | bc -l)") | |
MD
echo "wrote $OUT"
