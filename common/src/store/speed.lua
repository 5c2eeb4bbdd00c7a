#!lua name=tandem
-- Tandem's speed layer in Redis (ARCHITECTURE.md §3–4). Loaded with FUNCTION LOAD REPLACE by
-- `RedisStore::connect`; the Rust side is `store/redis_store.rs`, and `store/memory.rs` does the
-- same in memory. Every key of one user shares the user's `{user}` hash tag: one slot.
--
-- Keys of a user U:
--   tandem:u:{U}:speed               hash: `offset` = the last bus offset applied for U, `log` =
--                                    the identity of the bus log that offset is of (with the
--                                    store token of the partition's work, `<log>|store:<token>`);
--                                    `erased` = when U was erased (ingest ms), if ever: U's
--                                    events ingested at or before it are skipped
--   tandem:u:{U}:seen                zset: recent event ids, scored by minus their offset (the
--                                    newest SEEN_MAX; gone SEEN_TTL_MS after the user's last event)
--   tandem:u:{U}:epochs              zset: the ingest epochs U has deltas in (member = score = ms)
--   tandem:u:{U}:epoch:<ms>          hash: the epoch's mergeable features (see below)
--   tandem:u:{U}:epoch:<ms>:latest   zset: the epoch's latest items, scored by minus their
--                                    latest time
--   tandem:u:{U}:epoch:<ms>:latest-bought  zset: the epoch's latest items bought, likewise
--
-- Epoch hash fields: c0..c6 (events per kind), units, spend (micro-units), first, last, lastbuy
-- (epoch ms), a:<category> (decayed interest in log space, `%.17g`).
--
-- Why minus: Redis keeps a zset ordered by (score, member) and a small one as a list
-- (listpack) that an insert walks from its start to the new member's place. Scored by minus
-- time, the order is (time desc, item asc), the latest items' own order (features.rs): the
-- items past the first RECENT_MAX are exactly those to evict, ties included, so one
-- ZREMRANGEBYRANK trims; and new items (the latest) go in near the start instead of after every
-- older one. The same for the recent ids by offset. With fewer allocations in the Lua below
-- (every table and closure is Redis's time), Redis runs 37% fewer instructions per event of a
-- backfill (84.5k to 52.9k; `make bench-lua`).
--
-- Keys of the layout before (`tandem_apply_v4`; until the epochs it wrote are dropped, the day
-- after an upgrade): `epoch:<ms>:recent` and `epoch:<ms>:bought`, scored by plus time.
-- `tandem_read_v3` reads them beside the new ones; erasure, cleanup and a stale user's reset
-- delete them. A recent id scored by plus its offset (written before) sorts after every new
-- one and goes first, as the oldest it is.

local SEEN_MAX = 64 -- store::speed::SEEN_MAX
local SEEN_TTL_MS = 3600000 -- store::speed::SEEN_TTL_MS
local RECENT_MAX = '20' -- features::RECENT_ITEMS; as text, ZREMRANGEBYRANK's first rank to remove
local SEEN_FIRST_OUT = '64' -- SEEN_MAX as text: the rank of the first recent id past the newest

local function logaddexp(a, b)
  local m = math.max(a, b)
  return m + math.log(math.exp(a - m) + math.exp(b - m))
end

-- Keeps the RECENT_MAX items first by (time desc, item asc): the zset's own order (scores are
-- minus the time), so the ones past RECENT_MAX go by rank. Trimming once after several inserts
-- keeps the same items as trimming after each: an item is evicted only when RECENT_MAX others
-- are ahead of it, and those stay ahead (times only grow).
local function trim_recent(recent)
  redis.call('ZREMRANGEBYRANK', recent, RECENT_MAX, '-1')
end

-- The keys of a user's epoch `e` (`prefix .. e` is its hash), with the legacy ones (see above).
local function epoch_keys(prefix, e)
  local key = prefix .. e
  return key, key .. ':latest', key .. ':latest-bought', key .. ':recent', key .. ':bought'
end

local STRIDE = 11 -- ARGV entries per event
-- Sums of money saturate at 2^53 - 1 micro-units (features::MAX_MONEY_MICROS): the largest
-- integer a Lua number holds exactly. Each addend is at most that, so the double sum is exact
-- below the cap and at least 2^53 above it.
local MAX_MONEY = 9007199254740991
-- Redis turns a Lua number passed to redis.call into text with printf's `%.17g`, a slow path
-- (printf's float code took about a tenth of Redis's time in a profile): calls pass argument
-- strings as they came, or integers formatted with `%d` (5% less Redis CPU per event).
local PURCHASE = '4' -- the index of `purchase` in Rust's `Kind::ALL` (a Rust test holds it)

-- A Redis command over list[from .. to] (default: all of it), in chunks: Lua's `unpack` is
-- limited to a few thousand values (a user alone in a call may bring thousands of events).
-- `opt` is an option before the list, or nil. Returns the replies concatenated (tables) or summed
-- (integers). (No closure per call: every allocation here is Redis's time.)
local CHUNK = 1024 -- list entries per command; even, so that pairs stay together
local function bulk_run(cmd, key, opt, list, from, to)
  if opt then return redis.call(cmd, key, opt, unpack(list, from, to)) end
  return redis.call(cmd, key, unpack(list, from, to))
end

local function bulk(cmd, key, opt, list, from, to)
  from, to = from or 1, to or #list
  if to - from < CHUNK then return bulk_run(cmd, key, opt, list, from, to) end
  local sum, all = 0, {}
  for f = from, to, CHUNK do
    local r = bulk_run(cmd, key, opt, list, f, math.min(f + CHUNK - 1, to))
    if type(r) == 'table' then
      for j = 1, #r do all[#all + 1] = r[j] end
    else
      sum = sum + r
    end
  end
  if #all > 0 then return all end
  return sum
end

-- Reads an epoch's current values of `fields` (plus first, last, lastbuy) as numbers.
local function epoch_state(key, fields)
  local names = { 'first', 'last', 'lastbuy' }
  for f in pairs(fields) do names[#names + 1] = f end
  local cur = bulk('HMGET', key, nil, names)
  local st = { key = key, val = {}, dirty = {}, fresh = cur[1] == false }
  for j, f in ipairs(names) do
    local v = cur[j]
    if v then st.val[f] = tonumber(v) end
  end
  return st
end

-- Which of the fresh events args[i] (i in `fresh`, in offset order, each past the user's last
-- offset) are new, and which repeat an event id the user has among its newest SEEN_MAX; records
-- the new ones in `seen`, keeping the newest SEEN_MAX by offset. Returns the new ones' indices
-- and how many were duplicates.
--
-- The memory backend checks and trims after each event. When no id is already in the set and
-- none repeats within the call (every event but a retried producer's), the outcome is the same
-- in two calls: one ZADD NX adds every id (it says so by its count), one trim keeps the newest
-- SEEN_MAX (the fresh offsets are past every offset in the set, so the per-event trims evict
-- exactly what the one trim does). Otherwise the ids that ZADD added (scored with minus their
-- own event's offset: an id already there keeps its older one) are removed again, and the
-- events go one by one, as the memory backend does.
-- With `other_log` (the recent ids are of another log, whose offsets may equal these) the
-- take back could not tell an id that was there from one just added: one by one at once.
local function record_seen(seen, args, fresh, other_log)
  if not other_log then
    local pairs_ = {}
    for _, i in ipairs(fresh) do
      pairs_[#pairs_ + 1] = '-' .. args[i]
      pairs_[#pairs_ + 1] = args[i + 1]
    end
    if bulk('ZADD', seen, 'NX', pairs_) == #fresh then
      redis.call('ZREMRANGEBYRANK', seen, SEEN_FIRST_OUT, '-1')
      return fresh, 0
    end
    local ids = {}
    for j, i in ipairs(fresh) do ids[j] = args[i + 1] end
    local scores = bulk('ZMSCORE', seen, nil, ids)
    local added = {}
    for j, i in ipairs(fresh) do
      if scores[j] and tonumber(scores[j]) == -tonumber(args[i]) then added[#added + 1] = ids[j] end
    end
    if #added > 0 then bulk('ZREM', seen, nil, added) end
  end
  local new, dup, seen_n = {}, 0, redis.call('ZCARD', seen)
  for _, i in ipairs(fresh) do
    if redis.call('ZADD', seen, 'NX', '-' .. args[i], args[i + 1]) == 0 then
      dup = dup + 1
    else
      seen_n = seen_n + 1
      if seen_n > SEEN_MAX then
        redis.call('ZREMRANGEBYRANK', seen, SEEN_FIRST_OUT, '-1')
        seen_n = SEEN_MAX
      end
      new[#new + 1] = i
    end
  end
  return new, dup
end

-- Adds the deltas of the events args[i] (i in `new`) to their epochs: per epoch slot, one HMGET
-- of the fields they touch and one HSET of the changed ones; per latest-items zset, one ZADD
-- of all its items and one trim. Epoch slots' keys from keys[k + 1], their ms from args[h + 1].
local function add_deltas(keys, k, args, h, new)
  local epochs = keys[k + 3]
  local by_slot = {} -- per epoch slot: the fields its events touch
  for _, i in ipairs(new) do
    local slot = tonumber(args[i + 2])
    local f = by_slot[slot]
    if not f then f = {}; by_slot[slot] = f end
    f['c' .. args[i + 4]] = true
    if args[i + 4] == PURCHASE then f.units = true; f.spend = true end
    if args[i + 8] ~= '' and args[i + 9] ~= '' then f['a:' .. args[i + 8]] = true end
  end
  local states = {} -- per epoch slot: the hash's values, and which of them changed
  for slot, fields in pairs(by_slot) do
    states[slot] = epoch_state(keys[k + 1 + 3 * slot], fields)
    local ms = args[h + slot]
    if states[slot].fresh then redis.call('ZADD', epochs, ms, ms) end
  end
  local items = {} -- per latest-items zset: its (minus time, item) pairs to add
  local function add_item(key, ts, item)
    local l = items[key]
    if not l then l = {}; items[key] = l end
    l[#l + 1] = '-' .. ts
    l[#l + 1] = item
  end
  for _, i in ipairs(new) do
    local slot = tonumber(args[i + 2])
    local st = states[slot]
    local val, dirty = st.val, st.dirty
    local ts = tonumber(args[i + 5])
    if not val.first or ts < val.first then val.first = ts; dirty.first = args[i + 5] end
    if not val.last or ts > val.last then val.last = ts; dirty.last = args[i + 5] end
    local c = 'c' .. args[i + 4]
    val[c] = (val[c] or 0) + 1
    dirty[c] = true
    local purchase = args[i + 4] == PURCHASE
    if purchase then
      val.units = (val.units or 0) + tonumber(args[i + 6])
      val.spend = math.min((val.spend or 0) + tonumber(args[i + 7]), MAX_MONEY)
      dirty.units, dirty.spend = true, true
      if not val.lastbuy or ts > val.lastbuy then val.lastbuy = ts; dirty.lastbuy = args[i + 5] end
    end
    local cat, term = args[i + 8], args[i + 9]
    if cat ~= '' and term ~= '' then
      local f = 'a:' .. cat
      local x, t = val[f], tonumber(term)
      if x == nil then val[f] = t else val[f] = logaddexp(x, t) end
      dirty[f] = false
    end
    local item = args[i + 10]
    if item ~= '' then
      add_item(keys[k + 2 + 3 * slot], args[i + 5], item)
      if purchase then add_item(keys[k + 3 + 3 * slot], args[i + 5], item) end
    end
  end
  -- dirty[f]: the string to store (first, last, lastbuy), true for a counter (`%d`), false for
  -- an affinity (`%.17g`, formatted once per call rather than once per event).
  for _, st in pairs(states) do
    local flat = {}
    for f, how in pairs(st.dirty) do
      flat[#flat + 1] = f
      if how == true then
        flat[#flat + 1] = string.format('%d', st.val[f])
      elseif how == false then
        flat[#flat + 1] = string.format('%.17g', st.val[f])
      else
        flat[#flat + 1] = how
      end
    end
    if #flat > 0 then bulk('HSET', st.key, nil, flat) end
  end
  -- One ZADD LT (the lowest score is the latest time) of several pairs does what a ZADD LT per
  -- pair does, in order; it counts the items it added, and a zset that gained none needs no trim.
  for key, l in pairs(items) do
    if bulk('ZADD', key, 'LT', l) > 0 then trim_recent(key) end
  end
end

-- The log identity without its store token (store::speed::TOKEN_SEP), and whether it had one.
local function log_base(l)
  local base = string.match(l, '^(.*)|store:[^|]*$')
  if base then return base, true end
  return l, false
end

-- Where a user's events of the bus log `log` count from, given the user's speed hash fields
-- `meta` (offset, erased, log): the kept offset, or -1; and whether the user's recent ids are
-- of another log (their offsets say nothing of this one's). The same log under another store token
-- (store::speed::LogMatch::Stale) means the user's speed state was written after the store lost
-- its data, and the partition is replayed from its start now: that state is dropped (the
-- erasure marker stays) so that the replay rebuilds it, instead of being skipped by the offset.
local function count_from(log, keys, k, meta)
  local last = tonumber(meta[1] or '-1')
  if log == '' or not meta[3] or meta[3] == log then return last, false end
  local kept_base, kept_token = log_base(meta[3])
  local base, token = log_base(log)
  if kept_base ~= base then return -1, true end
  if not (kept_token and token) then return last, false end
  local speed, seen, epochs = keys[k + 1], keys[k + 2], keys[k + 3]
  local prefix = string.sub(speed, 1, -6) .. 'epoch:'
  for _, e in ipairs(redis.call('ZRANGE', epochs, 0, -1)) do
    redis.call('UNLINK', epoch_keys(prefix, e))
  end
  redis.call('UNLINK', seen, epochs)
  redis.call('HDEL', speed, 'offset', 'log')
  return -1, false
end

-- One user's events, in offset order, from the bus log `log` ('' if unknown): its keys from
-- keys[k + 1], its epoch slots' ms from args[h + 1], its events' entries args[a .. b] (see
-- `apply`). An offset kept for another log says nothing of this one (a topic deleted and
-- created again starts from 0): the user's events then count from the first. Returns applied,
-- skipped as already applied (offset), skipped as duplicate (event id), skipped as erased.
local function apply_user(log, keys, k, args, h, a, b)
  local speed, seen = keys[k + 1], keys[k + 2]
  local meta = redis.call('HMGET', speed, 'offset', 'erased', 'log')
  local last, other_log = count_from(log, keys, k, meta)
  local erased = meta[2] and tonumber(meta[2])
  local old, gone = 0, 0
  local fresh = {} -- events past the last offset, not erased
  local top = nil
  for i = a, b, STRIDE do
    local offset = tonumber(args[i])
    if offset <= last then
      old = old + 1
    else
      last = offset
      top = args[i]
      if erased and tonumber(args[i + 3]) <= erased then
        gone = gone + 1
      else
        fresh[#fresh + 1] = i
      end
    end
  end
  local new, dup = {}, 0
  if #fresh > 0 then
    new, dup = record_seen(seen, args, fresh, other_log)
    add_deltas(keys, k, args, h, new)
    redis.call('PEXPIRE', seen, SEEN_TTL_MS)
  end
  if top then
    if log ~= '' and meta[3] ~= log then
      redis.call('HSET', speed, 'offset', top, 'log', log)
    else
      redis.call('HSET', speed, 'offset', top)
    end
  end
  return #new, old, dup, gone
end

-- The events of several users, each user's applied as one atomic step (the whole call is one).
-- KEYS: per user: speed, seen, epochs, then per epoch slot its hash, its latest items zset and
--       its latest items bought zset.
-- ARGV: the bus log's identity ('' if unknown), then
--       per user: its number of epoch slots, its number of events, each slot's epoch ms, then
--       per event (in offset order): offset, event_id, epoch slot (1-based), ingest ts (ms),
--       kind index, ts, units, spend (micro-units; both 0 unless a purchase), category ('' if
--       none), decay term ('' if the event carries no interest), item ('' if none): STRIDE
--       entries each.
-- On a Redis Cluster a call holds one user (all of a user's keys share its slot).
-- Returns { applied, skipped as already applied (offset), skipped as duplicate (event id),
--           skipped as erased }.
local function apply(keys, args)
  local applied, old, dup, gone = 0, 0, 0, 0
  local log = args[1]
  local k, i = 0, 2
  while i <= #args do
    local slots, n = tonumber(args[i]), tonumber(args[i + 1])
    local a = i + 2 + slots
    local b = a + n * STRIDE - 1
    local w, x, y, z = apply_user(log, keys, k, args, i + 1, a, b)
    applied, old, dup, gone = applied + w, old + x, dup + y, gone + z
    k = k + 3 + 3 * slots
    i = b + 1
  end
  return { applied, old, dup, gone }
end


-- The fast path (tandem_apply_fast_v2). Rust folds each user's events of a call per epoch into
-- one delta (`Profile::apply`, the fold the memory store and the batch use), so that Redis adds
-- a handful of fields per epoch instead of running a loop per event: the per-event Lua was most
-- of Redis's time. It applies a user's deltas only when every one of the user's events is new —
-- past the user's last offset (of this log), not erased, and with an event id not among the
-- recent ones (one ZADD NX adds them all) — so that the sum of the deltas is what the events
-- one by one would add. Otherwise it changes nothing (ids it added are removed again) and names
-- the user, whose events Rust then sends through tandem_apply_v5, one by one: replays after a
-- crash and retried producers only.

-- Adds slot s's delta (fields, then latest items and items bought) to its epoch. The delta's
-- entries start at args[j]: nf, nr, nb, then nf (field, value), nr (minus ts, item), nb (minus
-- ts, item): the zsets' scores as they are stored.
local function add_delta(keys, k, s, ms, args, j)
  local nf, nr, nb = tonumber(args[j]), tonumber(args[j + 1]), tonumber(args[j + 2])
  j = j + 3
  local key = keys[k + 1 + 3 * s]
  local names = { 'first', 'last', 'lastbuy' }
  for x = 0, nf - 1 do
    local f = args[j + 2 * x]
    if f ~= 'first' and f ~= 'last' and f ~= 'lastbuy' then names[#names + 1] = f end
  end
  local cur = bulk('HMGET', key, nil, names)
  if cur[1] == false then redis.call('ZADD', keys[k + 3], ms, ms) end
  local old = {}
  for idx, f in ipairs(names) do old[f] = cur[idx] end
  local flat = {}
  for x = 0, nf - 1 do
    local f, v = args[j + 2 * x], args[j + 2 * x + 1]
    local was, out = old[f], nil
    if f == 'first' then
      if not was or tonumber(v) < tonumber(was) then out = v end
    elseif f == 'last' or f == 'lastbuy' then
      if not was or tonumber(v) > tonumber(was) then out = v end
    elseif string.byte(f, 1) == 97 then -- 'a:<category>': log space
      local t = tonumber(v)
      if was then t = logaddexp(tonumber(was), t) end
      out = string.format('%.17g', t)
    elseif f == 'spend' then
      out = string.format('%d', math.min((tonumber(was) or 0) + tonumber(v), MAX_MONEY))
    else -- a count or units
      out = string.format('%d', (tonumber(was) or 0) + tonumber(v))
    end
    if out then
      flat[#flat + 1] = f
      flat[#flat + 1] = out
    end
  end
  if #flat > 0 then bulk('HSET', key, nil, flat) end
  j = j + 2 * nf
  for z = 1, 2 do
    local count = z == 1 and nr or nb
    if count > 0 then
      local zkey = keys[k + 1 + 3 * s + z]
      if bulk('ZADD', zkey, 'LT', args, j, j + 2 * count - 1) > 0 then trim_recent(zkey) end
      j = j + 2 * count
    end
  end
  return j
end

-- One user of a fast call: its n events' (offset, id, ingest ts) from args[e], its slots'
-- deltas from args[d]. Returns true when applied, false when it must go the slow path.
local function fast_user(log, keys, k, args, h, slots, n, e, d)
  local speed, seen = keys[k + 1], keys[k + 2]
  local meta = redis.call('HMGET', speed, 'offset', 'erased', 'log')
  local last, other_log = count_from(log, keys, k, meta)
  -- A recent id of another log may carry the very offset an event of this one has: the take
  -- back below could not tell it from one this call added. One by one, then (rare: a topic
  -- deleted and created again).
  if other_log then return false end
  local erased = meta[2] and tonumber(meta[2])
  local top = last
  local pairs_ = {}
  for j = e, e + 3 * (n - 1), 3 do
    local offset = tonumber(args[j])
    if offset <= top or (erased and tonumber(args[j + 2]) <= erased) then return false end
    top = offset
    pairs_[#pairs_ + 1] = '-' .. args[j]
    pairs_[#pairs_ + 1] = args[j + 1]
  end
  if bulk('ZADD', seen, 'NX', pairs_) ~= n then
    -- An id was there already: take back the ones this call added (scored with minus their
    -- own event's offset) and leave the user to the slow path.
    local ids = {}
    for x = 2, #pairs_, 2 do ids[#ids + 1] = pairs_[x] end
    local scores = bulk('ZMSCORE', seen, nil, ids)
    local added = {}
    for x, id in ipairs(ids) do
      if scores[x] and tonumber(scores[x]) == tonumber(pairs_[2 * x - 1]) then added[#added + 1] = id end
    end
    if #added > 0 then bulk('ZREM', seen, nil, added) end
    return false
  end
  redis.call('ZREMRANGEBYRANK', seen, SEEN_FIRST_OUT, '-1')
  redis.call('PEXPIRE', seen, SEEN_TTL_MS)
  local j = d
  for s = 1, slots do j = add_delta(keys, k, s, args[h + s], args, j) end
  if log ~= '' and meta[3] ~= log then
    redis.call('HSET', speed, 'offset', args[e + 3 * (n - 1)], 'log', log)
  else
    redis.call('HSET', speed, 'offset', args[e + 3 * (n - 1)])
  end
  return true
end

-- KEYS: as tandem_apply_v5's. ARGV: the bus log's identity ('' if unknown), then per user: its
-- number of events n, its number of epoch slots, each slot's epoch ms, then per event (in
-- offset order) its offset, event id and ingest ts, then per slot its delta (see add_delta).
-- Returns { applied, the 1-based places in the call of the users left to the slow path… }.
local function apply_fast(keys, args)
  local log = args[1]
  local out = { 0 }
  local k, i, u = 0, 2, 0
  while i <= #args do
    u = u + 1
    local n, slots = tonumber(args[i]), tonumber(args[i + 1])
    local e = i + 2 + slots
    local d = e + 3 * n
    local j = d
    for _ = 1, slots do
      j = j + 3 + 2 * (tonumber(args[j]) + tonumber(args[j + 1]) + tonumber(args[j + 2]))
    end
    if fast_user(log, keys, k, args, i + 1, slots, n, e, d) then
      out[1] = out[1] + n
    else
      out[#out + 1] = u
    end
    k = k + 3 + 3 * slots
    i = j
  end
  return out
end

-- KEYS: speed, epochs. ARGV: from epoch (ms), the prefix of the user's epoch keys.
-- Returns { offset or false, erased or false, epoch, fields (flat), latest items (flat, with
--           scores: minus their time, or plus it from a legacy key), items bought (likewise),
--           epoch, … }.
local function read(keys, args)
  local out = redis.call('HMGET', keys[1], 'offset', 'erased')
  for _, e in ipairs(redis.call('ZRANGE', keys[2], args[1], '+inf', 'BYSCORE')) do
    local key, latest, bought, old_latest, old_bought = epoch_keys(args[2], e)
    local items = redis.call('ZRANGE', latest, 0, -1, 'WITHSCORES')
    local buys = redis.call('ZRANGE', bought, 0, -1, 'WITHSCORES')
    if redis.call('EXISTS', old_latest, old_bought) > 0 then
      for _, v in ipairs(redis.call('ZRANGE', old_latest, 0, -1, 'WITHSCORES')) do items[#items + 1] = v end
      for _, v in ipairs(redis.call('ZRANGE', old_bought, 0, -1, 'WITHSCORES')) do buys[#buys + 1] = v end
    end
    out[#out + 1] = e
    out[#out + 1] = redis.call('HGETALL', key)
    out[#out + 1] = items
    out[#out + 1] = buys
  end
  return out
end

-- Erasure (ARCHITECTURE.md §7). KEYS: speed, seen, epochs, then the user's snapshot rows to delete.
-- ARGV: when (ingest ms), the prefix of the user's epoch keys.
-- Deletes every delta, recent id and named row of the user; keeps the offset and records
-- `erased` (the later of the old and new), so that the user's events ingested until then are
-- skipped when they come (late, or replayed). Returns how many keys it deleted.
local function erase(keys, args)
  local n = 0
  for _, e in ipairs(redis.call('ZRANGE', keys[3], 0, -1)) do
    n = n + redis.call('UNLINK', epoch_keys(args[2], e))
  end
  n = n + redis.call('UNLINK', keys[2], keys[3])
  for j = 4, #keys do n = n + redis.call('UNLINK', keys[j]) end
  local before = tonumber(redis.call('HGET', keys[1], 'erased') or '-1')
  if tonumber(args[1]) > before then redis.call('HSET', keys[1], 'erased', args[1]) end
  return n
end

-- KEYS: speed. ARGV: when (ingest ms). Records `erased` (the later of the old and new) and
-- deletes nothing: an erasure known from the lake's tombstones, noted again in a store that
-- may have lost it. Returns 1 if it changed the marker.
local function note_erasure(keys, args)
  local before = tonumber(redis.call('HGET', keys[1], 'erased') or '-1')
  if tonumber(args[1]) > before then
    redis.call('HSET', keys[1], 'erased', args[1])
    return 1
  end
  return 0
end

-- KEYS: epochs. ARGV: cutoff (ms), the prefix of the user's epoch keys.
-- Deletes the user's epochs before the cutoff; returns how many epochs it deleted.
local function drop_before(keys, args)
  local doomed = redis.call('ZRANGE', keys[1], '-inf', '(' .. args[1], 'BYSCORE')
  for _, e in ipairs(doomed) do
    redis.call('UNLINK', epoch_keys(args[2], e))
  end
  if #doomed > 0 then
    redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', '(' .. args[1])
  end
  return #doomed
end

-- A lease (a batch run's: two runs at once would clean up each other's snapshot rows).
-- KEYS: the lease key. ARGV: 'take', 'renew' or 'release'; the owner; the time to live (ms).
-- take: set it to the owner if nobody holds it (a lapsed lease is gone: Redis expired it);
-- renew (and take by its holder): extend it; release: delete it. Only the holder changes it.
-- Returns { 1 if the owner holds it now else 0, the holder or false, ms until it lapses }.
local function lease(keys, args)
  local op, owner, ttl = args[1], args[2], args[3]
  local holder = redis.call('GET', keys[1])
  if holder == false then
    if op ~= 'take' then return { 0, false, 0 } end
    redis.call('SET', keys[1], owner, 'PX', ttl)
    return { 1, owner, tonumber(ttl) }
  end
  if holder == owner then
    if op == 'release' then
      redis.call('DEL', keys[1])
      return { 0, false, 0 }
    end
    redis.call('PEXPIRE', keys[1], ttl)
    return { 1, owner, tonumber(ttl) }
  end
  return { 0, holder, redis.call('PTTL', keys[1]) }
end

-- Versions: a binary calls the functions of its own layout; an older one finds its names gone
-- and loads its own library again (as after a restart), so that two versions side by side
-- each run their own functions.
redis.register_function('tandem_apply_v5', apply)
redis.register_function('tandem_apply_fast_v2', apply_fast)
redis.register_function{ function_name = 'tandem_read_v3', callback = read, flags = { 'no-writes' } }
redis.register_function('tandem_drop_before_v1', drop_before)
redis.register_function('tandem_erase_v1', erase)
redis.register_function('tandem_lease_v1', lease)
redis.register_function('tandem_note_erasure_v1', note_erasure)
