#!/usr/bin/env bash
# `tandem stream run --until-caught-up` of two binaries, alternating in one time window, on one
# filled local bus and a fresh redis-server each run: an A/B of two commits that the shared
# host's swings (±40% within hours) do not decide. Prints each run's events/s.
#
#   bench/stream_ab.sh OLD_BINARY NEW_BINARY        (EVENTS=5000000 ROUNDS=2 by default)
#
# Build the two binaries from two checkouts (`git worktree add`) into one CARGO_TARGET_DIR, copying
# `release/tandem` aside after each build.
set -euo pipefail
OLD=${1:?old binary}; NEW=${2:?new binary}; EVENTS=${EVENTS:-5000000}; ROUNDS=${ROUNDS:-2}
W=$(mktemp -d /tmp/tandem-stream-ab.XXXXXX)
P=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
redis-server --port $P --save '' --appendonly no --daemonize yes --dir $W >/dev/null; sleep 0.3
trap 'redis-cli -p $P shutdown nosave >/dev/null 2>&1; rm -rf $W' EXIT
SET=(--set bus.partitions=8 --set log.level=warn)
"$NEW" generate --users $((EVENTS/110+1)) --days 30 --seed 1 --end 2026-11-01T00:00:00Z --events $EVENTS --bus "local://$W/bus?fsync=never" "${SET[@]}" >/dev/null
for r in $(seq $ROUNDS); do
  for v in old new; do
    bin=$OLD; [ $v = new ] && bin=$NEW
    redis-cli -p $P flushall >/dev/null; rm -rf $W/bus/consumers/speed
    out=$("$bin" stream run --bus "local://$W/bus" --store redis://127.0.0.1:$P --until-caught-up "${SET[@]}")
    echo "$r $v $(echo "$out" | python3 -c 'import json,sys;s=json.load(sys.stdin);print(s["applied"], round(s["records_per_second"]))')"
  done
done
