-- expiry.lua: state keys with an expiry of their own (hash-field expiry: Redis 7.4+, Valkey
-- 9+). open.lua, commit.lua and load.lua include this text where they say so (scripts.py puts it there).
-- The ttls key is described in keyspace.py; the design in docs/design/key-expiry.md.
--
-- A state key set with a ttl gets HPEXPIREAT on its field and one member in ttls,
-- "<bytes>:<name>" (bytes = #name + #value, what it counts in meta b), scored by the Unix ms
-- it expires at. Redis removes the field on its own; the scripts take its bytes out of b when
-- they find its time passed, at most DUE_BATCH keys per script, so none of them scans the hash.

local DUE_BATCH = 1000

local clock_ms
-- The server's clock, Unix ms (TIME, read once per script).
local function now_ms()
  if not clock_ms then
    local t = redis.call('TIME')
    clock_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return clock_ms
end

-- The ttls member of state key name holding a value of len bytes.
local function ttl_member(name, len)
  return (#name + len) .. ':' .. name
end

-- "Redis 7.0.15", "Valkey 9.1.2": what an error about a missing command names.
local function server_name()
  local valkey = rawget(redis, 'VALKEY_VERSION')
  if valkey then return 'Valkey ' .. valkey end
  return 'Redis ' .. redis.REDIS_VERSION
end

-- Take the state keys whose expiry passed out of ttls, and their bytes out of size (nil:
-- unknown, and left so). A field whose time passed by the clock but not yet for this script
-- (a script sees the time it started at) is deleted here, so what the script reads next
-- agrees. A member whose field has another expiry, or none, or that does not parse was
-- written by something else: the size is unknown then (the next eager open counts it).
-- Returns the size.
local function expire_due(state, ttls, size)
  local due = redis.call('ZRANGE', ttls, '-inf', string.format('%.0f', now_ms()), 'BYSCORE',
    'LIMIT', 0, DUE_BATCH, 'WITHSCORES')
  if #due == 0 then return size end
  local names, bytes, scores, members = {}, {}, {}, {}
  for i = 1, #due, 2 do
    members[#members + 1] = due[i]
    local b, name = string.match(due[i], '^(%d+):(.*)$')
    if b then
      names[#names + 1] = name
      bytes[#names] = tonumber(b)
      scores[#names] = tonumber(due[i + 1])
    else
      size = nil
    end
  end
  if #names > 0 then
    local at = redis.call('HPEXPIRETIME', state, 'FIELDS', #names, unpack(names))
    for i = 1, #names do
      if at[i] == scores[i] then  -- due now, though this script still sees it
        redis.call('HDEL', state, names[i])
      elseif at[i] ~= -2 then  -- there, with another expiry or none: not ours to count
        size = nil
      end
      if size then size = size - bytes[i] end
    end
  end
  redis.call('ZREM', ttls, unpack(members))
  if size and size < 0 then size = nil end
  return size
end

-- Milliseconds until the earliest expiry of a state key still ahead; -1 when none has one.
local function next_expiry(ttls)
  local now = now_ms()
  local first = redis.call('ZRANGE', ttls, string.format('(%.0f', now), '+inf', 'BYSCORE',
    'LIMIT', 0, 1, 'WITHSCORES')
  if #first == 0 then return -1 end
  return tonumber(first[2]) - now
end

-- Nil when key (a hash, or none) can take field expiries; else the server's error.
local function field_expiry_refused(key)
  local r = redis.pcall('HPEXPIRETIME', key, 'FIELDS', 1, '-')
  if type(r) == 'table' and r.err then return r.err end
  return nil
end
