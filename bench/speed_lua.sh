#!/usr/bin/env bash
# Redis's CPU per event for variants of the speed layer's Redis functions, A/B in one window.
#
#   bench/speed_lua.sh [LUA...]       (default: the committed common/src/store/speed.lua)
#   ROUNDS=5 USERS=20000 bench/speed_lua.sh /tmp/a.lua /tmp/b.lua
#
# `bench/speed_calls.py` writes a backfill's `tandem_apply_fast_v2` calls (sessions of ~10
# events, 12 users per call, one epoch); each variant, in turn and ROUNDS times, gets a fresh
# redis-server, replays the warm-up calls (every user's keys exist, its sets are full), then
# the measured ones through `redis-cli --pipe`. The figure is Redis's own CPU time (user + sys,
# from INFO) per event applied, which a loaded machine disturbs less than a rate; each variant's
# median, and its ratio to the first. With INSTRUCTIONS=1, redis-server runs under valgrind's
# callgrind and the figure is the instructions Redis executed per measured event: the same
# count run after run whatever else the machine does (use fewer USERS: it runs ~50x slower).
# Every run checks that all events were applied by the fast path (the sum of the event counts
# in Redis equals the events sent).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
USERS="${USERS:-20000}"
[ $# -gt 0 ] || set -- common/src/store/speed.lua
WORK=$(mktemp -d /tmp/tandem-speed-lua.XXXXXX)
PORT=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
trap 'redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; [ -z "${KEEP:-}" ] && rm -rf "$WORK"; true' EXIT
read -r WARM_EVENTS EVENTS < <(python3 bench/speed_calls.py "$WORK" "$USERS")
echo "== Redis CPU per event of the speed functions: $USERS users, $WARM_EVENTS warm-up and $EVENTS measured events, $ROUNDS rounds =="

cpu() { redis-cli -p "$PORT" info cpu | awk -F: '/^used_cpu_(user|sys):/{s+=$2} END {printf "%.6f", s}'; }
INSTRUCTIONS="${INSTRUCTIONS:-}"
run() { # lua file → prints "µs/event events/s" (or "instructions/event events/s")
  local pid
  if [ -n "$INSTRUCTIONS" ]; then
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
      redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >/dev/null 2>"$WORK/valgrind.log" &
    pid=$!
  else
    redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" --daemonize yes --pidfile "$WORK/redis.pid" >/dev/null
  fi
  for _ in $(seq 300); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$PORT" -x FUNCTION LOAD REPLACE < "$1" >/dev/null
  redis-cli -p "$PORT" --pipe < "$WORK/warm.resp" > "$WORK/pipe.log"
  local c0 t0 c1 t1
  [ -z "$INSTRUCTIONS" ] || callgrind_control -i on "$pid" >/dev/null
  c0=$(cpu); t0=$(date +%s.%N)
  redis-cli -p "$PORT" --pipe < "$WORK/measure.resp" >> "$WORK/pipe.log"
  t1=$(date +%s.%N); c1=$(cpu)
  [ -z "$INSTRUCTIONS" ] || callgrind_control -i off "$pid" >/dev/null
  grep -q "errors: 0" "$WORK/pipe.log" || { cat "$WORK/pipe.log"; exit 1; }
  local got
  got=$(redis-cli -p "$PORT" eval "local n = 0
    for _, k in ipairs(redis.call('KEYS', 'tandem:u:*:epoch:*')) do
      if redis.call('TYPE', k).ok == 'hash' then
        for i = 0, 6 do n = n + tonumber(redis.call('HGET', k, 'c' .. i) or '0') end
      end
    end
    return n" 0)
  [ "$got" = "$((WARM_EVENTS + EVENTS))" ] || { echo "$1: Redis counts $got events of $((WARM_EVENTS + EVENTS))"; exit 1; }
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
  if [ -n "$INSTRUCTIONS" ]; then
    wait "$pid" || true
    local ir
    [ -z "${KEEP:-}" ] || cp "$WORK/cg.out" "$KEEP.$(basename "$1").cg"
    ir=$(awk '/^totals:/{print $2; exit}' "$WORK/cg.out")
    python3 -c "print('%.0f %.0f' % ($ir / $EVENTS, $EVENTS / ($t1 - $t0)))"
    return
  fi
  sleep 0.2
  python3 -c "print('%.3f %.0f' % (($c1 - $c0) * 1e6 / $EVENTS, $EVENTS / ($t1 - $t0)))"
}
UNIT="µs of Redis CPU"; [ -z "$INSTRUCTIONS" ] || UNIT="Redis instructions"
declare -A cpu_of rate_of
for r in $(seq "$ROUNDS"); do
  for lua in "$@"; do
    read -r c e < <(run "$lua")
    echo "round $r  $lua: $c $UNIT per event, $e events/s"
    cpu_of[$lua]+="$c "; rate_of[$lua]+="$e "
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
base=$(echo "${cpu_of[$1]}" | median)
for lua in "$@"; do
  m=$(echo "${cpu_of[$lua]}" | median); e=$(echo "${rate_of[$lua]}" | median)
  printf '%-50s median %8.2f %s per event (%.3f of the first)\n' "$lua" "$m" "$UNIT" "$(echo "$m/$base" | bc -l)"
done
