-- commit.lua: apply all writes of one session atomically, then release its lease.
-- Everything that can fail is checked before the first write, so a rejected commit
-- writes nothing.
--
-- KEYS[1] state   KEYS[2] meta   KEYS[3] lease   KEYS[4] wake   KEYS[5] prev
-- KEYS[6] commits (optional) sorted set: the first 16 hex digits of the SHA-1 of each recent
--                 commit id, scored by the version it produced; versions older than the last
--                 RECENT commits are trimmed every 64 commits, and the key expires when idle
--   (the keyspace is described in open.lua and keyspace.py)
-- ARGV[1] token        the session's lease token; "" for an unfenced commit
-- ARGV[2] commit id    "" or a unique id; a second commit with the same id is not applied
--                      while it is the last commit (meta c) or, for a retry or when the lease
--                      is no longer held, in KEYS[6], so a commit sent again after its first
--                      attempt applied is recognised even after other sessions committed in
--                      between
-- ARGV[3] flags        letters: c clear every stored key first, r record prior values in prev
--                      (for replays), w mark the workflow completed, a a retry of a commit
--                      whose reply was lost
-- ARGV[4] expire ms    > 0: every key of the object expires after this long
-- ARGV[5] wake ttl ms  how long an unclaimed release signal is kept
-- ARGV[6] n            number of state keys to delete, which follow
-- ARGV[7 .. 6+n]       state keys to delete
-- ARGV[7+n ..]         state key, value pairs to set
--
-- Reply: {1, version} applied; {2, version} this commit id was already applied (the lease
--        is released all the same; a {2} reply always writes something, so that a WAIT sent
--        after it on the same connection covers the earlier, applied attempt too);
--        {-3} the lease is no longer held by token; {-1, type} state is not a hash

local state, meta, lease, wake, prev = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local commits = KEYS[6]
local token, commit_id, flags = ARGV[1], ARGV[2], ARGV[3]
local clear_all, record = string.find(flags, 'c', 1, true), string.find(flags, 'r', 1, true)
local expire_ms, wake_ttl = tonumber(ARGV[4]), ARGV[5]
local first_set = 7 + tonumber(ARGV[6])
local RECENT = 1000

local function release()
  redis.call('DEL', lease, wake)
  redis.call('RPUSH', wake, '1')
  redis.call('PEXPIRE', wake, wake_ttl)
end

-- m: last commit id, version, stored bytes, prev flag (nil: prev holds nothing)
local m = redis.call('HMGET', meta, 'c', 'v', 'b', 'pf')
local held = token == '' or redis.call('GET', lease) == token
local tag = commit_id ~= '' and commits and string.sub(redis.sha1hex(commit_id), 1, 16)
if commit_id ~= '' then
  local seen = m[1] == commit_id
  -- Look further back on a retry, and whenever the lease is gone: a commit sent again by
  -- anything below the store (a client library's own retry) finds its lease released by
  -- its first, applied, execution, and must be recognised rather than refused.
  if not seen and tag and (not held or string.find(flags, 'a', 1, true)) then
    seen = redis.call('ZSCORE', commits, tag) ~= false
  end
  if seen then
    if token ~= '' and held then
      release()
    elseif m[2] then  -- a write, so that a WAIT after it covers the applied attempt too
      redis.call('HSET', meta, 'v', m[2])
    end
    return {2, m[2]}
  end
end
if not held then
  return {-3}
end
local t = redis.call('TYPE', state)['ok']
if t ~= 'hash' and t ~= 'none' then
  return {-1, t}
end

local size = tonumber(m[3])
if size == nil then  -- state written by something else: count it once
  size = 0
  for _, f in ipairs(redis.call('HKEYS', state)) do
    size = size + #f + redis.call('HSTRLEN', state, f)
  end
end

if record then
  if m[4] then redis.call('DEL', prev) end
  if clear_all then
    local old = redis.call('HGETALL', state)
    for i = 1, #old, 2 do redis.call('HSET', prev, old[i], '+' .. old[i + 1]) end
  else
    for i = 7, #ARGV do
      if i < first_set or (i - first_set) % 2 == 0 then
        local f = ARGV[i]
        local old = redis.call('HGET', state, f)
        redis.call('HSET', prev, f, old and ('+' .. old) or '-')
      end
    end
  end
elseif m[4] then
  redis.call('DEL', prev)
  redis.call('HDEL', meta, 'pf')
end

if clear_all then
  redis.call('DEL', state)
  size = 0
end
for i = 7, first_set - 1 do
  local f = ARGV[i]
  local len = redis.call('HSTRLEN', state, f)
  if redis.call('HDEL', state, f) == 1 then size = size - #f - len end
end
for i = first_set, #ARGV, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  local len = redis.call('HSTRLEN', state, f)
  if redis.call('HSET', state, f, v) == 1 then size = size + #f end
  size = size + #v - len
end

local version = (tonumber(m[2]) or 0) + 1
local fields = {'v', version, 'b', size}
if commit_id ~= '' then fields[#fields + 1] = 'c'; fields[#fields + 1] = commit_id end
if record then fields[#fields + 1] = 'pf'; fields[#fields + 1] = clear_all and '1' or '0' end
if string.find(flags, 'w', 1, true) then
  fields[#fields + 1] = 'wf'; fields[#fields + 1] = 'completed'
end
redis.call('HSET', meta, unpack(fields))
if tag then
  redis.call('ZADD', commits, version, tag)
  if version % 64 == 0 then redis.call('ZREMRANGEBYSCORE', commits, '-inf', version - RECENT) end
  redis.call('PEXPIRE', commits, 60000)
end
if expire_ms > 0 then
  redis.call('PEXPIRE', state, expire_ms)
  redis.call('PEXPIRE', meta, expire_ms)
  if record then redis.call('PEXPIRE', prev, expire_ms) end
end

if token ~= '' then release() end
return {1, version}
