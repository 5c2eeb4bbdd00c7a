#!lua name=tandem
-- Tandem's speed layer in Redis (DESIGN §3–4). Loaded with FUNCTION LOAD REPLACE by
-- `RedisStore::connect`; the Rust side is `store/redis_store.rs`, and `store/memory.rs` does the
-- same in memory. Every key of one user shares the user's `{user}` hash tag: one slot.
--
-- Keys of a user U:
--   tandem:u:{U}:speed               hash: `offset` = the last bus offset applied for U
--   tandem:u:{U}:seen                zset: recent event ids, scored by offset (the newest SEEN_MAX;
--                                    gone SEEN_TTL_MS after the user's last event)
--   tandem:u:{U}:epochs              zset: the ingest epochs U has deltas in (member = score = ms)
--   tandem:u:{U}:epoch:<ms>          hash: the epoch's mergeable features (see below)
--   tandem:u:{U}:epoch:<ms>:recent   zset: the epoch's latest items, scored by their latest time
--
-- Epoch hash fields: c0..c6 (events per kind), units, spend (micro-units), first, last, lastbuy
-- (epoch ms), a:<category> (decayed interest in log space, `%.17g`).

local SEEN_MAX = 64 -- store::speed::SEEN_MAX
local SEEN_TTL_MS = 3600000 -- store::speed::SEEN_TTL_MS
local RECENT_MAX = 20

local function logaddexp(a, b)
  local m = math.max(a, b)
  return m + math.log(math.exp(a - m) + math.exp(b - m))
end

-- Keeps the RECENT_MAX items first by (time desc, item asc): evicts the last by that order.
-- Trimming once after several inserts keeps the same items as trimming after each: an item is
-- evicted only when RECENT_MAX others are ahead of it, and those stay ahead (scores only grow).
local function trim_recent(recent)
  local extra = redis.call('ZCARD', recent) - RECENT_MAX
  while extra > 0 do
    local low = redis.call('ZRANGE', recent, 0, 0, 'WITHSCORES')
    local tied = redis.call('ZRANGE', recent, low[2], low[2], 'BYSCORE')
    redis.call('ZREM', recent, tied[#tied])
    extra = extra - 1
  end
end

local STRIDE = 11 -- ARGV entries per event
-- Redis turns a Lua number passed to redis.call into text with printf's `%.17g`, a slow path
-- (printf's float code took about a tenth of Redis's time in a profile): calls pass argument
-- strings as they came, or integers formatted with `%d` (5% less Redis CPU per event).
local PURCHASE = '4' -- the index of `purchase` in Rust's `Kind::ALL` (a Rust test holds it)

-- One user's events, in offset order: its keys from keys[k + 1], its events' entries
-- args[a .. b] (see `apply`). Returns applied, skipped as already applied (offset), skipped as
-- duplicate (event id).
local function apply_user(keys, k, args, a, b)
  local speed, seen, epochs = keys[k + 1], keys[k + 2], keys[k + 3]
  local last = tonumber(redis.call('HGET', speed, 'offset') or '-1')
  local applied, old, dup = 0, 0, 0
  local states = {} -- per epoch slot: { fields to set, counters to add, the hash's current values }
  local touched_recent = {}
  local top = nil
  local seen_n = nil
  for i = a, b, STRIDE do
    local offset = tonumber(args[i])
    if offset <= last then
      old = old + 1
    else
      last = offset
      top = args[i]
      if redis.call('ZADD', seen, 'NX', args[i], args[i + 1]) == 0 then
        dup = dup + 1
      else
        -- Keep the newest SEEN_MAX ids after every event, as the memory backend does.
        if seen_n then seen_n = seen_n + 1 else seen_n = redis.call('ZCARD', seen) end
        if seen_n > SEEN_MAX then
          redis.call('ZREMRANGEBYRANK', seen, 0, string.format('%d', seen_n - SEEN_MAX - 1))
          seen_n = SEEN_MAX
        end
        applied = applied + 1
        local slot = tonumber(args[i + 2])
        local st = states[slot]
        if not st then
          local ep = keys[k + 2 + 2 * slot]
          local cur = redis.call('HMGET', ep, 'first', 'last', 'lastbuy')
          st = { key = ep, set = {}, add = {}, first = tonumber(cur[1]), last = tonumber(cur[2]),
                 lastbuy = tonumber(cur[3]), aff = {} }
          states[slot] = st
          redis.call('ZADD', epochs, args[i + 3], args[i + 3])
        end
        local ts = tonumber(args[i + 5])
        if not st.first or ts < st.first then st.first = ts; st.set.first = args[i + 5] end
        if not st.last or ts > st.last then st.last = ts; st.set.last = args[i + 5] end
        local c = 'c' .. args[i + 4]
        st.add[c] = (st.add[c] or 0) + 1
        if args[i + 4] == PURCHASE then
          st.add.units = (st.add.units or 0) + tonumber(args[i + 6])
          st.add.spend = (st.add.spend or 0) + tonumber(args[i + 7])
          if not st.lastbuy or ts > st.lastbuy then st.lastbuy = ts; st.set.lastbuy = args[i + 5] end
        end
        local cat, term = args[i + 8], args[i + 9]
        if cat ~= '' and term ~= '' then
          local f = 'a:' .. cat
          local a = st.aff[f]
          if a == nil then
            a = tonumber(redis.call('HGET', st.key, f) or '-inf')
          end
          local t = tonumber(term)
          if a == -math.huge then a = t else a = logaddexp(a, t) end
          st.aff[f] = a
          st.set[f] = string.format('%.17g', a)
        end
        local item = args[i + 10]
        if item ~= '' then
          local recent = keys[k + 3 + 2 * slot]
          redis.call('ZADD', recent, 'GT', args[i + 5], item)
          touched_recent[recent] = true
        end
      end
    end
  end
  for _, st in pairs(states) do
    local flat = {}
    for f, v in pairs(st.set) do flat[#flat + 1] = f; flat[#flat + 1] = v end
    if #flat > 0 then redis.call('HSET', st.key, unpack(flat)) end
    for f, n in pairs(st.add) do redis.call('HINCRBY', st.key, f, string.format('%d', n)) end
  end
  for recent in pairs(touched_recent) do trim_recent(recent) end
  if applied + dup > 0 then
    redis.call('HSET', speed, 'offset', top)
    redis.call('PEXPIRE', seen, SEEN_TTL_MS)
  end
  return applied, old, dup
end

-- The events of several users, each user's applied as one atomic step (the whole call is one).
-- KEYS: per user: speed, seen, epochs, then per epoch slot its hash and its recent zset.
-- ARGV: per user: its number of epoch slots, its number of events, then per event (in offset
--       order): offset, event_id, epoch slot (1-based), epoch ms, kind index, ts, units, spend
--       (micro-units; both 0 unless a purchase), category ('' if none), decay term ('' if the
--       event carries no interest), item ('' if none): STRIDE entries each.
-- On a Redis Cluster a call holds one user (all of a user's keys share its slot).
-- Returns { applied, skipped as already applied (offset), skipped as duplicate (event id) }.
local function apply(keys, args)
  local applied, old, dup = 0, 0, 0
  local k, i = 0, 1
  while i <= #args do
    local slots, n = tonumber(args[i]), tonumber(args[i + 1])
    local a = i + 2
    local b = a + n * STRIDE - 1
    local x, y, z = apply_user(keys, k, args, a, b)
    applied, old, dup = applied + x, old + y, dup + z
    k = k + 3 + 2 * slots
    i = b + 1
  end
  return { applied, old, dup }
end

-- KEYS: speed, epochs. ARGV: from epoch (ms), the prefix of the user's epoch keys.
-- Returns { offset or false, epoch, fields (flat), recent (flat, with scores), epoch, … }.
local function read(keys, args)
  local out = { redis.call('HGET', keys[1], 'offset') }
  for _, e in ipairs(redis.call('ZRANGE', keys[2], args[1], '+inf', 'BYSCORE')) do
    local key = args[2] .. e
    out[#out + 1] = e
    out[#out + 1] = redis.call('HGETALL', key)
    out[#out + 1] = redis.call('ZRANGE', key .. ':recent', 0, -1, 'WITHSCORES')
  end
  return out
end

-- KEYS: epochs. ARGV: cutoff (ms), the prefix of the user's epoch keys.
-- Deletes the user's epochs before the cutoff; returns how many epochs it deleted.
local function drop_before(keys, args)
  local doomed = redis.call('ZRANGE', keys[1], '-inf', '(' .. args[1], 'BYSCORE')
  for _, e in ipairs(doomed) do
    redis.call('UNLINK', args[2] .. e, args[2] .. e .. ':recent')
  end
  if #doomed > 0 then
    redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', '(' .. args[1])
  end
  return #doomed
end

redis.register_function('tandem_apply_v2', apply)
redis.register_function{ function_name = 'tandem_read_v1', callback = read, flags = { 'no-writes' } }
redis.register_function('tandem_drop_before_v1', drop_before)
