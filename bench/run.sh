#!/usr/bin/env bash
# Tandem benchmarks. Prints figures and ratios against a peer run in the same script and writes
# bench/results/latest.md. Machines are shared and noisy: each figure is the median of
# BENCH_RUNS runs (default 3).
#
#   EVENTS=10000000 BENCH_RUNS=3 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# The tree measured, named before the results file is written (that file would make it dirty).
COMMIT=$(git describe --always --dirty=+uncommitted 2>/dev/null || echo unknown)
EVENTS="${EVENTS:-10000000}"
RUNS="${BENCH_RUNS:-3}"
BIN="${CARGO_TARGET_DIR:-target}/release/tandem"
WORK="${BENCH_DIR:-$(mktemp -d /tmp/tandem-bench.XXXXXX)}"
OUT=bench/results/latest.md
END="2026-11-01T00:00:00Z"
USERS=$(( EVENTS / 110 + 1 ))   # about 135 events per user over 30 days with the default knobs: a margin to reach EVENTS
trap 'rm -rf "$WORK"' EXIT
[ -x "$BIN" ] || { echo "build first: make bench"; exit 1; }
python3 -c "import duckdb, pyarrow" 2>/dev/null || pip install --quiet duckdb pyarrow
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
GEN=(generate --users "$USERS" --days 30 --seed 1 --end "$END" --events "$EVENTS")

echo "== tandem bench: $EVENTS events, median of $RUNS runs, $(nproc) cores =="
# 1. generate: JSON lines to a file.
gen_rates=()
for _ in $(seq "$RUNS"); do
  t0=$(now); "$BIN" "${GEN[@]}" -o "$WORK/events.jsonl"; t1=$(now)
  gen_rates+=("$(echo "$EVENTS / ($t1 - $t0)" | bc -l)")
done
GEN_RATE=$(printf '%s\n' "${gen_rates[@]}" | median)
JSON_BYTES=$(stat -c %s "$WORK/events.jsonl")
printf 'generate: %.0f events/s (%.0f MB of JSON lines)\n' "$GEN_RATE" "$(echo "$JSON_BYTES/1000000" | bc -l)"

# 2. ingest: JSON lines file -> Parquet lake; summary line has rate and peak RSS.
ing_rates=(); ing_rss=()
for i in $(seq "$RUNS"); do
  rm -rf "$WORK/lake"
  "$BIN" ingest "$WORK/events.jsonl" --lake "file://$WORK/lake" > "$WORK/ingest.json"
  ing_rates+=("$(python3 -c "import json;print(json.load(open('$WORK/ingest.json'))['events_per_s'])")")
  ing_rss+=("$(python3 -c "import json;print(json.load(open('$WORK/ingest.json'))['peak_rss_mb'])")")
done
ING_RATE=$(printf '%s\n' "${ing_rates[@]}" | median)
ING_RSS=$(printf '%s\n' "${ing_rss[@]}" | median)
read -r ACCEPTED LAKE_BYTES FILES < <(python3 -c "import json;s=json.load(open('$WORK/ingest.json'));print(s['accepted'],s['bytes'],s['files'])")
BYTES_PER_M=$(echo "$LAKE_BYTES * 1000000 / $ACCEPTED" | bc -l)
printf 'ingest:   %.0f events/s, peak RSS %.0f MiB, %s files, %.1f MB per million events\n' "$ING_RATE" "$ING_RSS" "$FILES" "$(echo "$BYTES_PER_M/1000000" | bc -l)"

# 3. memory flat in input size: the same ingest on half the input. (Below one file's worth of
#    rows — lake.file_max_rows, 4M — memory is still filling the first file's buffers.)
HALF=$(( EVENTS / 2 ))
head -n "$HALF" "$WORK/events.jsonl" > "$WORK/small.jsonl"
"$BIN" ingest "$WORK/small.jsonl" --lake "file://$WORK/lake-small" > "$WORK/small.json"
SMALL_RSS=$(python3 -c "import json;print(json.load(open('$WORK/small.json'))['peak_rss_mb'])")
printf 'ingest memory: %.0f MiB for %d events, %.0f MiB for %d events (ratio %.2f)\n' "$SMALL_RSS" "$HALF" "$ING_RSS" "$EVENTS" "$(echo "$ING_RSS/$SMALL_RSS" | bc -l)"

# 4. the peer and the independent reader: DuckDB reads our Parquet, and converts the same
#    JSON lines to zstd Parquet itself, on the same cores.
python3 bench/peer.py "$WORK" "$ACCEPTED" "$RUNS" > "$WORK/peer.json"
read -r DUCK_ROWS DUCK_RATE PYARROW_ROWS < <(python3 -c "import json;s=json.load(open('$WORK/peer.json'));print(s['duckdb_rows'],s['duckdb_json_to_parquet_events_per_s'],s['pyarrow_rows'])")
printf 'independent readers: DuckDB %s rows, pyarrow %s rows, ingest reported %s\n' "$DUCK_ROWS" "$PYARROW_ROWS" "$ACCEPTED"
printf 'peer: DuckDB JSON->Parquet %.0f events/s; tandem ingest / DuckDB = %.2f\n' "$DUCK_RATE" "$(echo "$ING_RATE/$DUCK_RATE" | bc -l)"
[ "$DUCK_ROWS" = "$ACCEPTED" ] && [ "$PYARROW_ROWS" = "$ACCEPTED" ] || { echo "ROW COUNT MISMATCH"; exit 1; }

# 5. the batch views over the same lake, and the same profile SQL in DuckDB on the same files.
VB="${CARGO_TARGET_DIR:-target}/release/examples/views_bench"
mkdir -p "$WORK/sql"
"$VB" "file://$WORK/lake" "$WORK/sql" > "$WORK/views.json"
read -r V_DEDUPE V_PROF V_ITEMS V_SIM V_RSS V_PROF_ROWS < <(python3 -c "import json;s=json.load(open('$WORK/views.json'));v=s['views'];print(s['dedupe_scan_seconds'],v['profiles']['seconds'],v['items']['seconds'],v['similar_items']['seconds'],s['peak_rss_mb'],v['profiles']['rows'])")
printf 'batch views: dedupe %.1f s, profiles %.1f s, items %.1f s, similar_items %.1f s, peak RSS %s MiB\n' "$V_DEDUPE" "$V_PROF" "$V_ITEMS" "$V_SIM" "$V_RSS"
python3 bench/duck_profiles.py "$WORK/lake" "$WORK/sql" 1 > "$WORK/duck_profiles.json"
read -r D_DEDUPE D_PROF D_ROWS < <(python3 -c "import json;s=json.load(open('$WORK/duck_profiles.json'));print(s['dedupe_seconds'],s['profiles_seconds'],s['profiles_rows'])")
printf 'DuckDB: dedupe %.1f s, profiles %.1f s (%s rows; tandem %s); profiles tandem/DuckDB = %.2f\n' "$D_DEDUPE" "$D_PROF" "$D_ROWS" "$V_PROF_ROWS" "$(echo "$V_PROF/$D_PROF" | bc -l)"
[ "$D_ROWS" = "$V_PROF_ROWS" ] || { echo "PROFILE ROW COUNT MISMATCH"; exit 1; }

# 6. the whole batch run (views + training + publish) into a real Redis of the bench's own.
#    Epochs of one minute, and a wait for the next minute boundary, so the cutoff covers the
#    events ingested just now.
RPORT=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" --daemonize yes --pidfile "$WORK/redis.pid" >/dev/null
trap 'kill "$(cat "$WORK/redis.pid" 2>/dev/null)" 2>/dev/null; rm -rf "$WORK"' EXIT
sleep $(( 61 - $(date +%S | sed 's/^0//') ))
"$BIN" batch run --lake "file://$WORK/lake" --store "redis://127.0.0.1:$RPORT" --set events.epoch=1m --set log.level=warn > "$WORK/batch.json"
python3 - "$WORK/batch.json" > "$WORK/batch.txt" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d, m = s["durations_s"], s["models"]["trained"]
print(s["events"], d["total"], d["views"], d["train"], d["write_lake"], d["materialise"], d.get("cleanup", 0),
      s["peak_rss_mb"], s["store_rows"], m["ranker"]["hit_rate"], m["popularity"]["hit_rate"],
      m["ranker"]["ndcg"], m["popularity"]["ndcg"], m["propensity_auc"], m["segments"], m["eval_users"])
PY
read -r B_EVENTS B_TOTAL B_VIEWS B_TRAIN B_WRITE B_MAT B_CLEAN B_RSS B_ROWS R_HIT P_HIT R_NDCG P_NDCG P_AUC SEGS EVAL_USERS < "$WORK/batch.txt"
printf 'batch run: %s events, %.1f s total (views %.1f, train %.1f, write %.1f, materialise %.1f), peak RSS %s MiB, %s Redis rows\n' "$B_EVENTS" "$B_TOTAL" "$B_VIEWS" "$B_TRAIN" "$B_WRITE" "$B_MAT" "$B_RSS" "$B_ROWS"
printf 'models: hit@10 ranker %.3f vs popularity %.3f; NDCG@10 %.3f vs %.3f; propensity AUC %.3f; %s segments\n' "$R_HIT" "$P_HIT" "$R_NDCG" "$P_NDCG" "$P_AUC" "$SEGS"

mkdir -p bench/results
cat > "$OUT" <<MD
# Tandem benchmark results

Written by \`make bench\` on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB,
commit $COMMIT. Median of $RUNS runs.

## Foundation (issue #2): generate and ingest, $EVENTS events

| figure | value | target |
|---|---|---|
| generate (JSON lines to a file) | $(printf '%.0f' "$GEN_RATE") events/s | ≥ 500,000 |
| ingest (JSON lines file → zstd Parquet lake) | $(printf '%.0f' "$ING_RATE") events/s | ≥ 300,000 |
| DuckDB, same JSON → zstd Parquet (peer) | $(printf '%.0f' "$DUCK_RATE") events/s | |
| tandem ingest / DuckDB | $(printf '%.2f' "$(echo "$ING_RATE/$DUCK_RATE" | bc -l)") | |
| lake bytes per million events | $(printf '%.1f' "$(echo "$BYTES_PER_M/1000000" | bc -l)") MB | |
| JSON bytes per million events | $(printf '%.1f' "$(echo "$JSON_BYTES*1000000/$EVENTS/1000000" | bc -l)") MB | |
| ingest peak RSS, $EVENTS events | $(printf '%.0f' "$ING_RSS") MiB | flat in input size |
| ingest peak RSS, $HALF events | $(printf '%.0f' "$SMALL_RSS") MiB | |
| peak RSS ratio, full / half input | $(printf '%.2f' "$(echo "$ING_RSS/$SMALL_RSS" | bc -l)") | ≈ 1 |
| rows read back by DuckDB / pyarrow / reported by ingest | $DUCK_ROWS / $PYARROW_ROWS / $ACCEPTED | equal |

## Batch (issue #3), same lake, one run

The views step materialises the deduplicated events once, then computes each view over them.
DuckDB runs the same deduplication and the same profile SQL file (placeholders filled for the
same cutoff) on the same Parquet files, same cores.

| figure | tandem | DuckDB | ratio | target |
|---|---|---|---|---|
| dedupe (scan, cutoff, first copy per user and event_id) | $(printf '%.1f' "$V_DEDUPE") s | $(printf '%.1f' "$D_DEDUPE") s | $(printf '%.2f' "$(echo "$V_DEDUPE/$D_DEDUPE" | bc -l)") | |
| profiles view | $(printf '%.1f' "$V_PROF") s | $(printf '%.1f' "$D_PROF") s | $(printf '%.2f' "$(echo "$V_PROF/$D_PROF" | bc -l)") | ≤ 1.5 |
| items view | $(printf '%.1f' "$V_ITEMS") s | | | |
| similar_items view | $(printf '%.1f' "$V_SIM") s | | | |

Whole \`tandem batch run\` (views + training + publish into a real redis-server), $B_EVENTS events:

| figure | value | target |
|---|---|---|
| total | $(printf '%.1f' "$B_TOTAL") s | ≤ 90 s |
| views / train / write lake / materialise / cleanup | $(printf '%.1f / %.1f / %.1f / %.1f / %.1f' "$B_VIEWS" "$B_TRAIN" "$B_WRITE" "$B_MAT" "$B_CLEAN") s | |
| peak RSS | $B_RSS MiB | ≤ 6144 MiB |
| rows written to Redis | $B_ROWS | |
| ranker hit rate at 10 / popularity | $(printf '%.3f / %.3f' "$R_HIT" "$P_HIT") | ranker > popularity |
| ranker NDCG at 10 / popularity | $(printf '%.3f / %.3f' "$R_NDCG" "$P_NDCG") | |
| propensity ROC AUC (held-out week) | $(printf '%.3f' "$P_AUC") | |
| segments (k by mean silhouette) | $SEGS | |
| users evaluated | $EVAL_USERS | |
MD
echo "wrote $OUT"
