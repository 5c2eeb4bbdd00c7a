#!/usr/bin/env bash
# Batch beyond one machine (issue #32): full and incremental `tandem batch run`s over lakes of
# generated events that streamed in over 30 days (`tandem generate --streamed`: each event in
# its ingest date's folder, 5% hours to days late, 2% sent twice), and the views of a full run
# on a Ballista cluster (a scheduler and two executors, separate processes) beside the local
# engine. Each scale: a full run at the cutoff a day before the end (the previous night's
# snapshot), then on one copy of that lake the incremental run at the end (merging the last
# day), on another the full run at the end. Time and peak memory from each run's summary.
# Writes bench/results/batch.md.
#
#   SCALES="1000000 3000000 10000000 30000000" BALLISTA_EVENTS=10000000 bench/batch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=$(git describe --always --dirty=+uncommitted 2>/dev/null || echo unknown)
SCALES="${SCALES:-1000000 3000000 10000000 30000000}"
BALLISTA_EVENTS="${BALLISTA_EVENTS:-10000000}"
BIN="${CARGO_TARGET_DIR:-target}/release/tandem"
WORK="${BENCH_DIR:-$(mktemp -d /tmp/tandem-bench-batch.XXXXXX)}"
mkdir -p "$WORK"
OUT=bench/results/batch.md
END=2026-11-01T00:00:00Z
BEFORE=2026-10-31T00:00:00Z
[ -x "$BIN" ] || { echo "build first: make bench"; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is missing: make deps"; exit 1; }
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$WORK"/redis-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# A redis-server of its own for each lake (each run publishes into the store of its lake).
redis() {
  local port; port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
    --daemonize yes --pidfile "$WORK/redis-$port.pid" >/dev/null
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  echo "redis://127.0.0.1:$port"
}
# batch LAKE STORE CUTOFF [FLAGS…] -> the summary line, in $WORK/last.json
batch() {
  local lake=$1 store=$2 cutoff=$3; shift 3
  "$BIN" batch run --lake "file://$lake" --store "$store" --cutoff "$cutoff" --no-progress \
    --set log.level=warn --set batch.cleanup_grace=0s "$@" > "$WORK/last.json"
}
field() { python3 -c "import json,sys;s=json.load(open('$WORK/last.json'));print(eval(sys.argv[1]))" "$1"; }

echo "== tandem batch bench: scales $SCALES, $(nproc) cores =="
ROWS=""
PARTS=""
for N in $SCALES; do
  # About 135 events per user over 30 days with the default knobs: no cap, so that every day,
  # the last one too, has its events.
  USERS=$(( N / 135 + 1 ))
  L="$WORK/lake-$N"
  "$BIN" generate --users "$USERS" --days 30 --seed 1 --end "$END" --dup-rate 0.02 \
    --lake "file://$L" --streamed --set log.level=warn > "$WORK/gen.json"
  # The previous night's snapshot, published in the store the incremental run publishes into
  # (as in production: the store serves it); the full run's store gets it too, republished.
  S=$(redis)
  batch "$L" "$S" "$BEFORE" --full
  BASE_EVENTS=$(field "s['events']")
  cp -r "$L" "$L-full"
  F=$(redis)
  batch "$L-full" "$F" "$BEFORE"
  batch "$L" "$S" "$END"
  [ "$(field "s['merged_from'] is not None")" = True ] || { echo "the run at $END was not incremental: $(cat "$WORK/last.json")"; exit 1; }
  INC_S=$(field "s['durations_s']['total']"); INC_MB=$(field "s['peak_rss_mb']"); EVENTS=$(field "s['events']")
  INC_VIEWS=$(field "s['durations_s']['views']")
  PARTS+="| $N | $(python3 -c "import json;d=json.load(open('$WORK/last.json'))['durations_s'];print(' | '.join('%.2f' % d.get(k, 0) for k in ['views.new_events','views.delta_views','views.profiles','views.baskets','views.similar','write_lake','materialise','cleanup','total']))") |"$'\n'
  NEW=$(( EVENTS - BASE_EVENTS ))
  batch "$L-full" "$F" "$END" --full
  FULL_S=$(field "s['durations_s']['total']"); FULL_MB=$(field "s['peak_rss_mb']")
  FULL_VIEWS=$(field "s['durations_s']['views']")
  [ "$(field "s['events']")" = "$EVENTS" ] || { echo "full and incremental disagree on the events"; exit 1; }
  printf '%s events (%s deduplicated at the end, %s new in the last day): full %.1f s, %s MiB; incremental %.1f s, %s MiB (%.3f / %.3f of the full)\n' \
    "$N" "$EVENTS" "$NEW" "$FULL_S" "$FULL_MB" "$INC_S" "$INC_MB" "$(echo "$INC_S/$FULL_S" | bc -l)" "$(echo "$INC_MB/$FULL_MB" | bc -l)"
  ROWS+=$(printf '| %s | %s | %s | %.1f s | %s MiB | %.1f s | %.1f s | %s MiB | %.1f s | %.3f | %.3f |' \
    "$N" "$EVENTS" "$NEW" "$FULL_S" "$FULL_MB" "$FULL_VIEWS" "$INC_S" "$INC_MB" "$INC_VIEWS" \
    "$(echo "$INC_S/$FULL_S" | bc -l)" "$(echo "$INC_MB/$FULL_MB" | bc -l)")$'\n'
  if [ "$N" = "$BALLISTA_EVENTS" ]; then
    B_LAKE="$L-full"; B_FULL_S=$FULL_S; B_FULL_VIEWS=$FULL_VIEWS; B_FULL_MB=$FULL_MB
  else
    rm -rf "$L" "$L-full"
  fi
done

BALLISTA=""
if [ -n "${B_LAKE:-}" ]; then
  # The cluster: one scheduler, two executors with one task slot each (the machine's two cores),
  # separate processes on loopback, each reading the lake itself.
  cp -r "$B_LAKE" "$WORK/lake-ballista"
  rm -rf "$WORK/lake-ballista/snapshots"
  SP=$(free_port); E1=$(free_port); E2=$(free_port)
  "$BIN" ballista scheduler --listen "127.0.0.1:$SP" --lake "file://$WORK/lake-ballista" --set log.level=warn 2>"$WORK/scheduler.log" &
  PIDS+=($!)
  sleep 1
  for E in "$E1" "$E2"; do
    mkdir -p "$WORK/shuffle-$E"
    "$BIN" ballista executor --scheduler "127.0.0.1:$SP" --listen "127.0.0.1:$E" --external-host 127.0.0.1 \
      --vcores 1 --work-dir "$WORK/shuffle-$E" --lake "file://$WORK/lake-ballista" --set log.level=warn 2>"$WORK/executor-$E.log" &
    PIDS+=($!)
  done
  sleep 3
  TANDEM__BATCH__ENGINE="ballista://127.0.0.1:$SP" batch "$WORK/lake-ballista" "$(redis)" "$END" --full
  B_S=$(field "s['durations_s']['total']"); B_VIEWS=$(field "s['durations_s']['views']"); B_MB=$(field "s['peak_rss_mb']")
  printf 'Ballista, %s events: views %.1f s (local %.1f s, %.2f×); whole run %.1f s; batch process %s MiB (local %s MiB)\n' \
    "$BALLISTA_EVENTS" "$B_VIEWS" "$B_FULL_VIEWS" "$(echo "$B_VIEWS/$B_FULL_VIEWS" | bc -l)" "$B_S" "$B_MB" "$B_FULL_MB"
  BALLISTA=$(cat <<EOF

## Full run, views on Ballista ($BALLISTA_EVENTS events)

A scheduler and two executors (\`tandem ballista scheduler|executor\`, one task slot each: the
machine's two cores), separate processes on loopback, reading the same file lake; the batch
process streams the models' inputs back from the cluster.

| figure | local engine | Ballista, 2 executors | ratio |
|---|---|---|---|
| views | $(printf '%.1f' "$B_FULL_VIEWS") s | $(printf '%.1f' "$B_VIEWS") s | $(printf '%.2f' "$(echo "$B_VIEWS/$B_FULL_VIEWS" | bc -l)") |
| whole run | $(printf '%.1f' "$B_FULL_S") s | $(printf '%.1f' "$B_S") s | $(printf '%.2f' "$(echo "$B_S/$B_FULL_S" | bc -l)") |
| peak memory of the batch process | $B_FULL_MB MiB | $B_MB MiB | $(printf '%.2f' "$(echo "$B_MB/$B_FULL_MB" | bc -l)") |
EOF
)
fi

cat > "$OUT" <<EOF
# Batch: full and incremental runs, and Ballista

Written by \`bench/batch.sh\` on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB,
commit $COMMIT. One run per figure (each is minutes long); time and peak RSS from each run's
summary (\`durations_s.total\`, \`peak_rss_mb\`), publishing into a real redis-server.

Generated events over 30 days as they would have streamed in (\`tandem generate --streamed
--dup-rate 0.02\`, every day of the 30), users = events / 135 (≈ the events asked for). The incremental run merges the snapshot of the day
before with the last day's events; the full run recomputes from the whole lake at the same
cutoff (and retrains the models, which the incremental run carries over). Both publish the same
views (the property test holds them equal row for row).

| events | deduplicated | new in the last day | full: time | full: peak | full: views | incremental: time | incremental: peak | incremental: views | time ratio | memory ratio |
|---|---|---|---|---|---|---|---|---|---|---|
$ROWS
Target: the incremental run at 10M events ≤ 1/10 of the full run's time and memory.

Where the incremental run's time goes (seconds; the summary's \`durations_s\`): the new events
found and deduplicated against the older folders, the delta views, the profiles and segments
streamed (the base's file read a row group at a time, the touched users merged and scored), the
baskets streamed, the similar items counted from all baskets, the other files written, the
publish (untouched users' latest items copied in the store), the cleanup of the base's keys.

| events | new events | delta views | profiles | baskets | similar | write lake | publish | cleanup | total |
|---|---|---|---|---|---|---|---|---|---|
$PARTS
$BALLISTA
EOF
echo "wrote $OUT"
