#!/usr/bin/env bash
# The speed layer and the archiver (issue #4). Prints figures and ratios and writes
# bench/results/stream.md. Each figure is the median of BENCH_RUNS runs (default 3).
#
#   EVENTS=10000000 BENCH_RUNS=3 bench/stream.sh
#
# 1. Fill a local:// bus (8 partitions) with EVENTS generated events, stamped as the API does.
# 2. `tandem stream run --until-caught-up` applies them to a real redis-server of the bench's own.
# 3. The ceiling: redis-benchmark runs the same Redis function with the same arguments shape
#    (events per call), the same pipeline depth (calls per batch) and one connection per
#    partition, on fresh users — what Redis alone can do with this work.
# 4. Memory: the same run on half the events; flat means the same peak.
# 5. `tandem stream archive --until-caught-up` writes the bus into a Parquet lake.
# 6. The same two on Fluvio: a cluster of the bench's own (one SC, one SPU on loopback, the
#    server `make deps` built), a topic of the same partitions pre-filled with the same events.
# 7. Freshness on each bus, as the serving bench measures it: `tandem serve` and `tandem stream
#    run` on a snapshot of a small history; POST one event, GET the profile until it shows. Then
#    the ingest ceiling: concurrent POSTs of one event each, the highest rate at p99 ≤ 25 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tree measured, named before the results file is written (that file would make it dirty).
COMMIT=$(git describe --always --dirty=+uncommitted 2>/dev/null || echo unknown)
EVENTS="${EVENTS:-10000000}"
RUNS="${BENCH_RUNS:-3}"
REL="${CARGO_TARGET_DIR:-target}/release"
BIN="$REL/tandem"
LOAD="$REL/examples/serve_bench"
FLUVIO_BIN="${TANDEM_FLUVIO_BIN:-$HOME/.cache/tandem-fluvio/src/target/release}"
WORK="${BENCH_DIR:-$(mktemp -d /tmp/tandem-stream-bench.XXXXXX)}"
OUT=bench/results/stream.md
END="2026-11-01T00:00:00Z"
USERS=$(( EVENTS / 110 + 1 ))
PARTS=8
[ -x "$BIN" ] && [ -x "$LOAD" ] || { echo "build first: make bench-stream"; exit 1; }
[ -x "$FLUVIO_BIN/fluvio-run" ] || { echo "no Fluvio server at $FLUVIO_BIN: make deps"; exit 1; }
command -v redis-benchmark >/dev/null || { echo "redis-benchmark is missing: apt-get install redis-tools"; exit 1; }
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
# CPU seconds (user + system) so far: of a running process, and of the bench's redis-server.
# Each figure below divides a process's CPU by the events: on 2 cores the three processes (the
# speed layer, Redis, the SPU) share them, so their sum per event bounds the throughput.
proc_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"; }
redis_cpu() { redis-cli -p "$RPORT" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/{s += $2} END {printf "%.3f", s}'; }
us_per_event() { echo "$1 * 1000000 / $EVENTS" | bc -l | xargs printf '%.1f'; }

free_port() { python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing answers on $1"; exit 1; }
PIDS=()
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" --daemonize yes --pidfile "$WORK/redis.pid" >/dev/null
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; kill "$(cat "$WORK/redis.pid" 2>/dev/null)" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
STORE="redis://127.0.0.1:$RPORT"
SET=(--set "bus.partitions=$PARTS" --set log.level=warn)

echo "== tandem stream bench: $EVENTS events, $PARTS partitions, median of $RUNS runs, $(nproc) cores =="
fill() { # events, bus dir
  "$BIN" generate --users "$USERS" --days 30 --seed 1 --end "$END" --events "$1" --bus "local://$2?fsync=never" "${SET[@]}" > "$2.fill.json"
}
fill "$EVENTS" "$WORK/bus"
printf 'fill: %.0f events/s onto the local bus\n' "$(field "$WORK/bus.fill.json" events_per_second)"

speed_run() { # bus dir, output; writes the run's CPU seconds (stream run, Redis) to output.cpu
  redis-cli -p "$RPORT" flushall >/dev/null
  rm -rf "$1/consumers/speed"
  local r0; r0=$(redis_cpu)
  /usr/bin/time -f '%U %S' -o "$2.time" "$BIN" stream run --bus "local://$1" --store "$STORE" --until-caught-up "${SET[@]}" > "$2"
  echo "$(awk '{print $1 + $2}' "$2.time") $(echo "$(redis_cpu) - $r0" | bc -l)" > "$2.cpu"
}
rates=(); rss=(); scpu=(); rcpu=()
for i in $(seq "$RUNS"); do
  speed_run "$WORK/bus" "$WORK/speed.json"
  rates+=("$(field "$WORK/speed.json" records_per_second)")
  rss+=("$(field "$WORK/speed.json" peak_rss_mb)")
  read -r s r < "$WORK/speed.json.cpu"; scpu+=("$s"); rcpu+=("$r")
done
SPEED_RATE=$(printf '%s\n' "${rates[@]}" | median)
SPEED_RSS=$(printf '%s\n' "${rss[@]}" | median)
SPEED_CPU=$(us_per_event "$(printf '%s\n' "${scpu[@]}" | median)")
REDIS_CPU=$(us_per_event "$(printf '%s\n' "${rcpu[@]}" | median)")
read -r APPLIED CALLS USERS BATCHES < <(python3 -c "import json;s=json.load(open('$WORK/speed.json'));print(s['applied'],s['calls'],s['users'],s['batches'])")
[ "$APPLIED" = "$EVENTS" ] || { echo "APPLIED $APPLIED OF $EVENTS EVENTS"; exit 1; }
PER_USER=$(python3 -c "print(max(1, round($APPLIED / $USERS)))")
USERS_PER_CALL=$(python3 -c "print(max(1, round($USERS / $CALLS)))")
DEPTH=$(python3 -c "print(max(1, round($CALLS / $BATCHES)))")
PER_CALL=$(( PER_USER * USERS_PER_CALL ))
printf 'stream run: %.0f events/s applied to Redis, peak RSS %s MiB (%s events in %s calls, %s batches: %s users per call, %s events per user, %s calls per pipeline)\n' \
  "$SPEED_RATE" "$SPEED_RSS" "$APPLIED" "$CALLS" "$BATCHES" "$USERS_PER_CALL" "$PER_USER" "$DEPTH"
printf 'CPU per event: stream run %s µs, Redis %s µs\n' "$SPEED_CPU" "$REDIS_CPU"

# The ceiling: the same function on fresh random users (every call creates its keys, as a
# first event of a user does): USERS_PER_CALL users of PER_USER events each per call, DEPTH
# calls per pipeline. Each user's events are views of PER_USER items in 5 categories, folded as
# `stream run` folds them (one epoch: a count, first and last, 5 interests, the items).
# (redis-benchmark draws each __rand_int__ on its own, so one "user"'s keys are several fresh
# users' keys: the same work for Redis.)
KEYS=(); ARGS=(bench-log)
for u in $(seq "$USERS_PER_CALL"); do
  for k in speed seen epochs "epoch:1793000000000" "epoch:1793000000000:latest" "epoch:1793000000000:latest-bought"; do KEYS+=("tandem:u:{__rand_int__}:$k"); done
  ARGS+=("$PER_USER" 1 1793000000000)
  for j in $(seq "$PER_USER"); do ARGS+=("$j" "e__rand_int__" 1793000001000); done
  ARGS+=(8 "$PER_USER" 0 c0 "$PER_USER" first 1792990000001 last "$((1792990000000 + PER_USER))")
  for c in 0 1 2 3 4; do ARGS+=("a:cat-$c" "1.25"); done
  for j in $(seq "$PER_USER"); do ARGS+=("-$((1792990000000 + j))" "item-__rand_int__"); done
done
ceil=()
for i in $(seq "$RUNS"); do
  redis-cli -p "$RPORT" flushall >/dev/null
  redis-cli -p "$RPORT" -x FUNCTION LOAD REPLACE < common/src/store/speed.lua >/dev/null
  rps=$(redis-benchmark -p "$RPORT" -n $(( 2000000 / PER_CALL )) -r 1000000000 -P "$DEPTH" -c "$PARTS" --csv \
        FCALL tandem_apply_fast_v2 "${#KEYS[@]}" "${KEYS[@]}" "${ARGS[@]}" | tail -1 | cut -d, -f2 | tr -d '"')
  ceil+=("$(echo "$rps * $PER_CALL" | bc -l)")
done
CEIL=$(printf '%s\n' "${ceil[@]}" | median)
printf 'ceiling: redis-benchmark, same function: %.0f events/s; stream run / ceiling = %.2f\n' "$CEIL" "$(echo "$SPEED_RATE/$CEIL" | bc -l)"

HALF=$(( EVENTS / 2 ))
fill "$HALF" "$WORK/bus-half"
speed_run "$WORK/bus-half" "$WORK/speed-half.json"
HALF_RSS=$(field "$WORK/speed-half.json" peak_rss_mb)
printf 'speed memory: %s MiB for %s events, %s MiB for %s events (ratio %.2f)\n' "$HALF_RSS" "$HALF" "$SPEED_RSS" "$EVENTS" "$(echo "$SPEED_RSS/$HALF_RSS" | bc -l)"
REDIS_MB=$(redis-cli -p "$RPORT" info memory | awk -F: '/^used_memory:/{printf "%.0f", $2/1048576}')

arates=(); arss=()
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/lake" "$WORK/bus/consumers/archive"
  "$BIN" stream archive --bus "local://$WORK/bus" --lake "file://$WORK/lake" --until-caught-up "${SET[@]}" > "$WORK/archive.json"
  arates+=("$(field "$WORK/archive.json" events_per_second)")
  arss+=("$(field "$WORK/archive.json" peak_rss_mb)")
done
ARCH_RATE=$(printf '%s\n' "${arates[@]}" | median)
ARCH_RSS=$(printf '%s\n' "${arss[@]}" | median)
ARCH_EVENTS=$(field "$WORK/archive.json" events)
ARCH_FILES=$(field "$WORK/archive.json" files)
[ "$ARCH_EVENTS" = "$EVENTS" ] || { echo "ARCHIVED $ARCH_EVENTS OF $EVENTS EVENTS"; exit 1; }
LAKE_ROWS=$("$BIN" sql --lake "file://$WORK/lake" -e "SELECT count(*) AS n, count(DISTINCT partition * 1000000000000 + \"offset\") AS positions FROM events_all" --format csv "${SET[@]}" | tail -1)
printf 'archive: %.0f events/s, peak RSS %s MiB, %s files; lake rows, distinct positions: %s\n' "$ARCH_RATE" "$ARCH_RSS" "$ARCH_FILES" "$LAKE_ROWS"

# 6. Fluvio: one SC and one SPU of the bench's own.
mkdir -p "$WORK/fluvio"
SC_PUB=$(free_port); SC_PRIV=$(free_port); SPU_PUB=$(free_port); SPU_PRIV=$(free_port)
"$FLUVIO_BIN/fluvio-run" sc --local "$WORK/fluvio/sc" --bind-public "127.0.0.1:$SC_PUB" --bind-private "127.0.0.1:$SC_PRIV" > "$WORK/fluvio/sc.log" 2>&1 &
PIDS+=($!)
wait_port "$SC_PUB"; wait_port "$SC_PRIV"
"$FLUVIO_BIN/cluster-setup" "127.0.0.1:$SC_PUB" spu 5001 "127.0.0.1:$SPU_PUB" "127.0.0.1:$SPU_PRIV" > /dev/null
"$FLUVIO_BIN/fluvio-run" spu -i 5001 -p "127.0.0.1:$SPU_PUB" -v "127.0.0.1:$SPU_PRIV" --sc-addr "127.0.0.1:$SC_PRIV" --log-base-dir "$WORK/fluvio/spu" > "$WORK/fluvio/spu.log" 2>&1 &
PIDS+=($!)
SPU_PID=$!
wait_port "$SPU_PUB"
FLUVIO="fluvio://127.0.0.1:$SC_PUB"
"$BIN" generate --users "$USERS" --days 30 --seed 1 --end "$END" --events "$EVENTS" --bus "$FLUVIO/bench" "${SET[@]}" > "$WORK/fluvio-fill.json"
printf 'fill: %.0f events/s onto the Fluvio topic\n' "$(field "$WORK/fluvio-fill.json" events_per_second)"
frates=(); frss=(); fscpu=(); frcpu=(); fpcpu=()
for i in $(seq "$RUNS"); do
  redis-cli -p "$RPORT" flushall >/dev/null
  r0=$(redis_cpu); p0=$(proc_cpu "$SPU_PID")
  /usr/bin/time -f '%U %S' -o "$WORK/fspeed.time" "$BIN" stream run --bus "$FLUVIO/bench" --store "$STORE" --group "speed-$i" --until-caught-up "${SET[@]}" > "$WORK/fspeed.json"
  [ "$(field "$WORK/fspeed.json" applied)" = "$EVENTS" ] || { echo "FLUVIO: APPLIED $(field "$WORK/fspeed.json" applied) OF $EVENTS"; exit 1; }
  frates+=("$(field "$WORK/fspeed.json" records_per_second)")
  frss+=("$(field "$WORK/fspeed.json" peak_rss_mb)")
  fscpu+=("$(awk '{print $1 + $2}' "$WORK/fspeed.time")")
  frcpu+=("$(echo "$(redis_cpu) - $r0" | bc -l)")
  fpcpu+=("$(echo "$(proc_cpu "$SPU_PID") - $p0" | bc -l)")
done
FSPEED_RATE=$(printf '%s\n' "${frates[@]}" | median)
FSPEED_RSS=$(printf '%s\n' "${frss[@]}" | median)
FSPEED_CPU=$(us_per_event "$(printf '%s\n' "${fscpu[@]}" | median)")
FREDIS_CPU=$(us_per_event "$(printf '%s\n' "${frcpu[@]}" | median)")
FSPU_CPU=$(us_per_event "$(printf '%s\n' "${fpcpu[@]}" | median)")
printf 'stream run from Fluvio: %.0f events/s, peak RSS %s MiB; / local bus %.2f; / ceiling %.2f\n' "$FSPEED_RATE" "$FSPEED_RSS" "$(echo "$FSPEED_RATE/$SPEED_RATE" | bc -l)" "$(echo "$FSPEED_RATE/$CEIL" | bc -l)"
printf 'CPU per event from Fluvio: stream run %s µs, Redis %s µs, SPU %s µs\n' "$FSPEED_CPU" "$FREDIS_CPU" "$FSPU_CPU"
farates=(); farss=()
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/flake"
  "$BIN" stream archive --bus "$FLUVIO/bench" --lake "file://$WORK/flake" --group "archive-$i" --until-caught-up "${SET[@]}" > "$WORK/farchive.json"
  [ "$(field "$WORK/farchive.json" events)" = "$EVENTS" ] || { echo "FLUVIO: ARCHIVED $(field "$WORK/farchive.json" events) OF $EVENTS"; exit 1; }
  farates+=("$(field "$WORK/farchive.json" events_per_second)")
  farss+=("$(field "$WORK/farchive.json" peak_rss_mb)")
done
FARCH_RATE=$(printf '%s\n' "${farates[@]}" | median)
FARCH_RSS=$(printf '%s\n' "${farss[@]}" | median)
FLAKE_ROWS=$("$BIN" sql --lake "file://$WORK/flake" -e "SELECT count(*) AS n, count(DISTINCT partition * 1000000000000 + \"offset\") AS positions FROM events_all" --format csv "${SET[@]}" | tail -1)
printf 'archive from Fluvio: %.0f events/s, peak RSS %s MiB; lake rows, distinct positions: %s\n' "$FARCH_RATE" "$FARCH_RSS" "$FLAKE_ROWS"

# 7. Freshness on each bus: a snapshot of a small history, then serve and the speed layer.
export BENCH_KEY="bench-key-0123456789abcdef"
cat > "$WORK/tandem.toml" <<TOML
[server]
api_keys = [{ name = "bench", key = "$BENCH_KEY", scopes = ["ingest", "read", "admin"] }]
TOML
FSET=(--config "$WORK/tandem.toml" --set log.level=warn --set bus.partitions=4 --set events.epoch=1s --set batch.window=2d)
"$BIN" generate --users 2000 --days 7 --seed 2 --lake "file://$WORK/flake-fresh" "${FSET[@]}" > /dev/null
sleep 2
"$BIN" batch run --lake "file://$WORK/flake-fresh" --store "$STORE" --set "bus.url=local://$WORK/fresh-bus" "${FSET[@]}" > /dev/null
"$BIN" sql --lake "file://$WORK/flake-fresh" -e "SELECT user_id FROM profiles" --format csv "${FSET[@]}" | tail -n +2 > "$WORK/fresh-users.txt"
export BENCH_USERS="$WORK/fresh-users.txt"
# Then the ingest ceiling on that bus: POST /v1/events, one new event per request, on 64
# connections; the highest rate with p99 ≤ 25 ms and every request answered 202.
freshness_and_ingest() { # bus URL -> "p50 p99 ingest-rate ingest-p99" (freshness: medians of RUNS runs of 300)
  local port pids=() f50=() f99=()
  port=$(free_port)
  "$BIN" serve --listen "127.0.0.1:$port" --store "$STORE" --bus "$1" --lake "file://$WORK/flake-fresh" "${FSET[@]}" &
  pids+=($!)
  "$BIN" stream run --bus "$1" --store "$STORE" "${FSET[@]}" > /dev/null &
  pids+=($!)
  PIDS+=("${pids[@]}")
  for _ in $(seq 150); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  for _ in $(seq "$RUNS"); do
    f=$("$LOAD" freshness "127.0.0.1:$port" 300)
    f50+=("$(python3 -c "import json,sys;print(json.loads(sys.argv[1])['p50_ms'])" "$f")")
    f99+=("$(python3 -c "import json,sys;print(json.loads(sys.argv[1])['p99_ms'])" "$f")")
  done
  ing=$("$LOAD" max "127.0.0.1:$port" events 25 3)
  kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true
  echo "$(printf '%s\n' "${f50[@]}" | median) $(printf '%s\n' "${f99[@]}" | median)" \
    "$(python3 -c "import json,sys;r=json.loads(sys.argv[1]);print(r['rate'], r['p99_ms'] if r['p99_ms'] is not None else '-')" "$ing")"
}
read -r LF50 LF99 LIN LIN99 < <(freshness_and_ingest "local://$WORK/fresh-bus")
printf 'freshness on the local bus: p50 %.1f ms, p99 %.1f ms\n' "$LF50" "$LF99"
printf 'POST /v1/events on the local bus: %.0f req/s at p99 %s ms\n' "$LIN" "$LIN99"
read -r FF50 FF99 FIN FIN99 < <(freshness_and_ingest "$FLUVIO/fresh")
printf 'freshness through Fluvio: p50 %.1f ms, p99 %.1f ms\n' "$FF50" "$FF99"
printf 'POST /v1/events through Fluvio: %.0f req/s at p99 %s ms\n' "$FIN" "$FIN99"

mkdir -p bench/results
cat > "$OUT" <<MD
# Tandem speed-layer benchmark results

Written by \`make bench\` (\`bench/stream.sh\`) on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores,
commit $COMMIT. Median of $RUNS runs.
$EVENTS generated events on a \`local://\` bus of $PARTS partitions, a redis-server $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2) of the bench's own.

| figure | value | target |
|---|---|---|
| \`tandem stream run\`: events applied to Redis per second | $(printf '%.0f' "$SPEED_RATE") | ≥ 100,000 |
| ceiling: redis-benchmark, the same function, $USERS_PER_CALL users × $PER_USER events per call, $DEPTH calls per pipeline, $PARTS connections | $(printf '%.0f' "$CEIL") events/s | |
| stream run / ceiling | $(printf '%.2f' "$(echo "$SPEED_RATE/$CEIL" | bc -l)") | ≥ 0.40 |
| CPU per event: \`stream run\` / Redis | $SPEED_CPU µs / $REDIS_CPU µs | |
| speed layer peak RSS, $EVENTS events | $SPEED_RSS MiB | flat in stream length |
| speed layer peak RSS, $HALF events | $HALF_RSS MiB | |
| Redis memory after $HALF events | $REDIS_MB MiB | |
| \`tandem stream archive\`: events per second | $(printf '%.0f' "$ARCH_RATE") | ≥ 200,000 |
| archiver peak RSS | $ARCH_RSS MiB | |
| archived files / lake rows, distinct (partition, offset) | $ARCH_FILES / $LAKE_ROWS | rows = positions = $EVENTS |

The same $EVENTS events pre-filled into a Fluvio topic of $PARTS partitions (one SC and one SPU on
loopback, built from Fluvio's source by \`make deps\`; replication 1):

| figure | value | target |
|---|---|---|
| fill: \`tandem generate --bus\` events/s onto the topic | $(printf '%.0f' "$(field "$WORK/fluvio-fill.json" events_per_second)") | |
| \`tandem stream run\` from Fluvio: events applied to Redis per second | $(printf '%.0f' "$FSPEED_RATE") | ≥ 100,000 |
| stream run, Fluvio / local bus | $(printf '%.2f' "$(echo "$FSPEED_RATE/$SPEED_RATE" | bc -l)") | |
| stream run from Fluvio / ceiling | $(printf '%.2f' "$(echo "$FSPEED_RATE/$CEIL" | bc -l)") | |
| CPU per event: \`stream run\` / Redis / SPU | $FSPEED_CPU µs / $FREDIS_CPU µs / $FSPU_CPU µs | |
| speed layer peak RSS from Fluvio | $FSPEED_RSS MiB | |
| \`tandem stream archive\` from Fluvio: events per second | $(printf '%.0f' "$FARCH_RATE") | |
| archiver peak RSS from Fluvio | $FARCH_RSS MiB | |
| lake rows, distinct (partition, offset) | $FLAKE_ROWS | rows = positions = $EVENTS |

Freshness, as \`bench/serve.sh\` measures it (POST one event → visible in GET profile, 300 events
one at a time, 20 ms apart; \`tandem serve\` and \`tandem stream run\` on a 4-partition bus, a
snapshot of 2,000 users in Redis); then the ingest ceiling on the same processes: \`POST /v1/events\`
of one new event per request on 64 connections (open loop, \`serve_bench max\`), the highest rate
with p99 ≤ 25 ms and every request answered 202 (load, server, speed layer, Redis and the SPU share
the 2 cores):

| bus | freshness p50 | freshness p99 | target | ingest, req/s at p99 ≤ 25 ms | its p99 |
|---|---|---|---|---|---|
| \`local://\` | $(printf '%.1f' "$LF50") ms | $(printf '%.1f' "$LF99") ms | | $(printf '%.0f' "$LIN") | $LIN99 ms |
| Fluvio | $(printf '%.1f' "$FF50") ms | $(printf '%.1f' "$FF99") ms | p99 ≤ 25 ms | $(printf '%.0f' "$FIN") | $FIN99 ms |
MD
echo "wrote $OUT"
