#!/usr/bin/env python3
"""Writes the speed layer's Redis calls of a backfill as RESP, for `redis-cli --pipe`.

The shape of `tandem stream run` on the stream bench's generated events: users in sessions of
about ten events (views, some clicks, carts and purchases, a few categories), each session one
user's part of a call, USERS_PER_CALL users per `tandem_apply_fast_v2` call, in one ingest
epoch, offsets growing per partition. Two files: `warm.resp` (the first WARM sessions of every
user: their keys exist and their sets are full, as in a long backfill) and `measure.resp` (the
rest). `bench/speed_lua.sh` replays them against variants of `speed.lua` and compares Redis's
CPU per event; the arguments are the ones `push_fast` in `store/redis_store.rs` writes.

    bench/speed_calls.py DIR [USERS] [SESSIONS] [WARM]
"""
import random
import sys

out_dir = sys.argv[1]
USERS = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
SESSIONS = int(sys.argv[3]) if len(sys.argv) > 3 else 11
WARM = int(sys.argv[4]) if len(sys.argv) > 4 else 7
USERS_PER_CALL = 12
PARTS = 8
EPOCH = 1793000000000
INGEST = EPOCH + 1000
rng = random.Random(1)


def resp(args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


offsets = [0] * PARTS
clock = [1792990000000 + rng.randrange(10**6) for _ in range(USERS)]


def session(u):
    """One user's session: its FCALL keys and arguments."""
    p = u % PARTS
    n = rng.randint(6, 14)
    evs = []
    counts = [0] * 7
    first = last = lastbuy = None
    units = spend = 0
    aff = {}
    recent = {}
    bought = {}
    cats = [rng.randrange(40) for _ in range(rng.randint(1, 3))]
    for _ in range(n):
        offsets[p] += 1
        clock[u] += rng.randrange(1000, 60000)
        ts = clock[u]
        r = rng.random()
        kind = 0 if r < 0.75 else 1 if r < 0.88 else 2 if r < 0.97 else 4
        counts[kind] += 1
        first = ts if first is None else min(first, ts)
        last = ts if last is None else max(last, ts)
        item = "item-%d" % rng.randrange(50000)
        cat = "cat-%d" % rng.choice(cats)
        aff[cat] = aff.get(cat, 0.0) + 1.0  # a log-space sum in the real fold; the work is the same
        recent[item] = ts
        if kind == 4:
            units += 1
            spend += rng.randrange(1000, 99000000)
            lastbuy = ts
            bought[item] = ts
        evs.append((offsets[p], "e%016x" % rng.getrandbits(64), INGEST))
    keys = [
        b"tandem:u:{u%d}:%s" % (u, k)
        for k in (b"speed", b"seen", b"epochs", b"epoch:%d" % EPOCH, b"epoch:%d:latest" % EPOCH,
                  b"epoch:%d:latest-bought" % EPOCH)
    ]
    fields = []
    for i, c in enumerate(counts):
        if c:
            fields += ["c%d" % i, c]
    if bought:
        fields += ["units", units, "spend", spend]
    fields += ["first", first, "last", last]
    if lastbuy is not None:
        fields += ["lastbuy", lastbuy]
    for c, v in sorted(aff.items()):
        fields += ["a:" + c, repr(1.25 * v)]
    rec = sorted(recent.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    bgt = sorted(bought.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    args = [len(evs), 1, EPOCH]
    for o, i, t in evs:
        args += [o, i, t]
    args += [len(fields) // 2, len(rec), len(bgt)] + fields
    for item, ts in rec + bgt:
        args += [-ts, item]  # the zsets' scores: minus the time
    return keys, args, n


def write(path, sessions):
    events = 0
    with open(path, "wb") as f:
        for c in range(0, len(sessions), USERS_PER_CALL):
            keys, args = [], [b"bench-log"]
            for u in sessions[c:c + USERS_PER_CALL]:
                k, a, n = session(u)
                keys += k
                args += a
                events += n
            f.write(resp([b"FCALL", b"tandem_apply_fast_v2", len(keys)] + keys + args))
    return events


# Sessions in time order: a user's sessions are far apart, users interleave.
rounds = [[u for u in range(USERS)] for _ in range(SESSIONS)]
for r in rounds:
    rng.shuffle(r)
w = write(out_dir + "/warm.resp", [u for r in rounds[:WARM] for u in r])
m = write(out_dir + "/measure.resp", [u for r in rounds[WARM:] for u in r])
print(w, m)
