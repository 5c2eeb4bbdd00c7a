#!/usr/bin/env bash
# `tandem stream run --until-caught-up` of two binaries, alternating in one time window, on one
# filled local bus and a fresh redis-server each run: an A/B of two commits that the shared
# host's swings (±40% within hours) do not decide. Prints each run's events/s and the CPU per
# event of the speed layer and of Redis (µs).
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
redis_cpu() { redis-cli -p $P info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/{s += $2} END {printf "%.3f", s}'; }
"$NEW" generate --users $((EVENTS/110+1)) --days 30 --seed 1 --end 2026-11-01T00:00:00Z --events $EVENTS --bus "local://$W/bus?fsync=never" "${SET[@]}" >/dev/null
for r in $(seq $ROUNDS); do
  for v in old new; do
    bin=$OLD; [ $v = new ] && bin=$NEW
    redis-cli -p $P flushall >/dev/null; rm -rf $W/bus/consumers/speed
    r0=$(redis_cpu)
    out=$(/usr/bin/time -f '%U %S' -o $W/time "$bin" stream run --bus "local://$W/bus" --store redis://127.0.0.1:$P --until-caught-up "${SET[@]}")
    cpu="$(awk '{print $1 + $2}' $W/time) $(echo "$(redis_cpu) - $r0" | bc -l)"
    echo "$r $v $(echo "$out" | python3 -c 'import json,sys;s=json.load(sys.stdin);c=sys.argv[1].split();n=s["applied"];print(n, round(s["records_per_second"]), "stream-us/event %.1f redis-us/event %.1f" % (float(c[0])*1e6/n, float(c[1])*1e6/n))' "$cpu")"
  done
done
