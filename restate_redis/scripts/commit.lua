-- commit.lua: apply all writes of one session atomically, then release its lease.
-- Everything that can fail is checked before the first write, so a rejected commit
-- writes nothing.
--
-- KEYS[1] state   KEYS[2] meta   KEYS[3] lease   KEYS[4] wake   KEYS[5] prev
-- KEYS[6] commits (optional) sorted set: first 16 hex digits of the SHA-1 of each recent
--                 commit id, scored by the server time in ms; entries older than RECENT_MS
--                 and beyond the newest RECENT_MAX are dropped, the key expires when idle
--   (the keyspace is described in open.lua and keyspace.py)
-- ARGV[1] token        the session's lease token; "" for an unfenced commit
-- ARGV[2] commit id    "" or a unique id; a second commit with the same id is not applied
--                      while it is the last commit (meta c) or in KEYS[6], so a retry whose
--                      first attempt applied but lost its reply is recognised even after
--                      other sessions committed in between
-- ARGV[3] clear all    "1": delete every stored key before the sets
-- ARGV[4] record       "1": keep the prior values of what changes in prev (for replays)
-- ARGV[5] expire ms    > 0: every key of the object expires after this long
-- ARGV[6] complete     "1": mark the workflow completed
-- ARGV[7] wake ttl ms  how long an unclaimed release signal is kept
-- ARGV[8] n            number of state keys to delete, which follow
-- ARGV[9 .. 8+n]       state keys to delete
-- ARGV[9+n ..]         state key, value pairs to set
--
-- Reply: {1, version} applied; {2, version} this commit id was already applied (the lease
--        is released all the same; a {2} reply always writes something, so that a WAIT sent
--        after it on the same connection covers the earlier, applied attempt too);
--        {-3} the lease is no longer held by token; {-1, type} state is not a hash

local state, meta, lease, wake, prev = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, commit_id = ARGV[1], ARGV[2]
local clear_all, record = ARGV[3] == '1', ARGV[4] == '1'
local expire_ms, wake_ttl = tonumber(ARGV[5]), ARGV[7]
local n_del = tonumber(ARGV[8])
local first_set = 9 + n_del
local commits = KEYS[6]  -- optional
local RECENT_MS, RECENT_MAX = 60000, 1000

local function release()
  redis.call('DEL', lease, wake)
  redis.call('RPUSH', wake, '1')
  redis.call('PEXPIRE', wake, wake_ttl)
end

local tag = commit_id ~= '' and string.sub(redis.sha1hex(commit_id), 1, 16) or ''
if commit_id ~= '' then
  local m = redis.call('HMGET', meta, 'c', 'v')
  local seen = m[1] == commit_id
  if not seen and commits then seen = redis.call('ZSCORE', commits, tag) ~= false end
  if seen then
    if token ~= '' and redis.call('GET', lease) == token then
      release()
    elseif m[2] then  -- a write, so that a WAIT after it covers the applied attempt too
      redis.call('HSET', meta, 'v', m[2])
    elseif commits then
      redis.call('PEXPIRE', commits, RECENT_MS)
    end
    return {2, m[2]}
  end
end
if token ~= '' and redis.call('GET', lease) ~= token then
  return {-3}
end
local t = redis.call('TYPE', state)['ok']
if t ~= 'hash' and t ~= 'none' then
  return {-1, t}
end

local size = tonumber(redis.call('HGET', meta, 'b'))
if size == nil then
  size = 0
  for _, f in ipairs(redis.call('HKEYS', state)) do
    size = size + #f + redis.call('HSTRLEN', state, f)
  end
end

redis.call('DEL', prev)
if record then
  if clear_all then
    local old = redis.call('HGETALL', state)
    for i = 1, #old, 2 do redis.call('HSET', prev, old[i], '+' .. old[i + 1]) end
  else
    for i = 9, #ARGV do
      if i < first_set or (i - first_set) % 2 == 0 then
        local f = ARGV[i]
        local old = redis.call('HGET', state, f)
        redis.call('HSET', prev, f, old and ('+' .. old) or '-')
      end
    end
  end
end

if clear_all then
  redis.call('DEL', state)
  size = 0
end
for i = 9, first_set - 1 do
  local f = ARGV[i]
  if redis.call('HEXISTS', state, f) == 1 then
    size = size - #f - redis.call('HSTRLEN', state, f)
    redis.call('HDEL', state, f)
  end
end
for i = first_set, #ARGV, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', state, f) == 1 then
    size = size - #f - redis.call('HSTRLEN', state, f)
  end
  size = size + #f + #v
  redis.call('HSET', state, f, v)
end

local version = redis.call('HINCRBY', meta, 'v', 1)
redis.call('HSET', meta, 'b', size, 'pf', clear_all and '1' or '0')
if commit_id ~= '' then redis.call('HSET', meta, 'c', commit_id) end
if commit_id ~= '' and commits then
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', commits, '-inf', ms - RECENT_MS)
  redis.call('ZADD', commits, ms, tag)
  redis.call('ZREMRANGEBYRANK', commits, 0, -RECENT_MAX - 1)
  redis.call('PEXPIRE', commits, RECENT_MS)
end
if ARGV[6] == '1' then redis.call('HSET', meta, 'wf', 'completed') end
if expire_ms > 0 then
  redis.call('PEXPIRE', state, expire_ms)
  redis.call('PEXPIRE', meta, expire_ms)
  redis.call('PEXPIRE', prev, expire_ms)
end

if token ~= '' then release() end
return {1, version}
