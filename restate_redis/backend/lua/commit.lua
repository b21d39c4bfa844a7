-- commit.lua: apply all writes of one session atomically, then release its lease.
-- Everything that can fail is checked before the first write (the type of every key it
-- touches, the lease, the bookkeeping), so a rejected commit writes nothing. Its work is
-- bounded by the size of the commit, never by the size of the stored state: a clear_all
-- unlinks or renames the hash, and a state of unknown size is counted only when it is
-- within the field limit. The keyspace (every key and meta field) is described in
-- keyspace.py.
--
-- KEYS[1] state  KEYS[2] meta  KEYS[3] lease  KEYS[4] wake  KEYS[5] prev  KEYS[6] commits
-- KEYS[7] old  KEYS[8] ttls  KEYS[#KEYS] history (the last; only with history on)
-- ARGV[1] token        the session's lease token; "" for an unfenced commit
-- ARGV[2] commit id    "" or a unique id; a second commit with the same id is not applied
--                      while it is the last commit (meta c) or, for a retry or when the lease
--                      is no longer held, in commits, so a commit sent again after its first
--                      attempt applied is recognised even after other sessions committed in
--                      between
-- ARGV[3] flags        letters: c clear every stored key first, r record prior values (for
--                      replays: in prev, or for a clear_all the whole state renamed to old),
--                      w mark the workflow completed, a a retry of a commit whose reply was
--                      lost, t a session that never opened (it only wrote): the lease is
--                      taken and given back within this script when no one holds it
-- ARGV[4] expire ms    > 0: every key of the object expires after this long
-- ARGV[5] lease ttl ms  how long an unclaimed release signal, or a handed-over lease, is kept
-- ARGV[6] field limit  a state of unknown size is counted only up to this many keys
-- ARGV[7] grace ms     an object left with no state keeps its bookkeeping this long
-- ARGV[8] next token   "" or the token of a session of the same store waiting for this
--                      object: the lease is handed to it (its token written into the lease,
--                      no release signal) instead of released
-- ARGV[9] history      "" off, else "max_versions max_age_ms max_entry_bytes origin": an
--                      entry of this commit in the history (history.lua)
-- ARGV[10] n           number of state keys to delete, which follow
-- ARGV[11 .. 10+n]     state keys to delete
-- ARGV[11+n] t         number of the state keys set below that get an expiry of their own
-- ARGV[12+n .. 11+n+2t] state key, ttl ms pairs: that key expires this long after the commit
--                      (hash-field expiry); every other key set loses the expiry it had
-- ARGV[12+n+2t ..]     state key, value pairs to set
--
-- Reply: {1, version} applied; {2, version} this commit id was already applied (the lease
--        is released all the same; a {2} reply always writes something, so that a WAIT sent
--        after it on the same connection covers the earlier, applied attempt too);
--        {0, lease pttl} (flag t) another session holds the lease;
--        {-3} the lease is no longer held by token; {-1, type, key} a key of the wrong type;
--        {-4, field, value} a meta field that does not parse; {-5, server, error} an expiry
--        asked of a server without hash-field expiry (nothing written)
--#include expiry.lua
--#include history.lua

local state, meta, lease, wake, prev = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local commits, old, ttls = KEYS[6], KEYS[7], KEYS[8]
local token, commit_id, flags = ARGV[1], ARGV[2], ARGV[3]
local clear_all, record = string.find(flags, 'c', 1, true), string.find(flags, 'r', 1, true)
local expire_ms, wake_ttl = tonumber(ARGV[4]), ARGV[5]
local field_limit, grace_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local next_token = ARGV[8]
local last_delete = 10 + tonumber(ARGV[10])
local first_ttl = last_delete + 2
local first_set = first_ttl + 2 * tonumber(ARGV[last_delete + 1])
local RECENT = 1000

local function wrong(key)
  return {-1, redis.call('TYPE', key)['ok'], key}
end
local function foreign(key, want)  -- a key whose first use below is a write
  local t = redis.call('TYPE', key)['ok']
  return t ~= want and t ~= 'none'
end

-- Reads first: a key of the wrong type fails them (pcall) before anything is written.
-- m: last commit id, version, stored bytes, prev flag, workflow status, grace flag
local m = redis.pcall('HMGET', meta, 'c', 'v', 'b', 'pf', 'wf', 'e')
if m.err then return wrong(meta) end
if m[2] and not string.match(m[2], '^%d+$') then return {-4, 'v', m[2]} end
if m[3] and not string.match(m[3], '^%d+$') then return {-4, 'b', m[3]} end
local holder = token ~= '' and redis.pcall('GET', lease)
if type(holder) == 'table' and holder.err then return wrong(lease) end
if foreign(state, 'hash') then return wrong(state) end
if foreign(wake, 'list') then return wrong(wake) end
local ttls_type = redis.call('TYPE', ttls)['ok']
if ttls_type ~= 'zset' and ttls_type ~= 'none' then return wrong(ttls) end
local timed = ttls_type == 'zset'  -- some state keys have an expiry of their own
local expiring = {}  -- state key -> ttl ms
for i = first_ttl, first_set - 1, 2 do expiring[ARGV[i]] = tonumber(ARGV[i + 1]) end
if first_set > first_ttl then
  local refused = field_expiry_refused(state)
  if refused then return {-5, server_name(), refused} end
end
if record or m[4] then
  if foreign(prev, 'hash') then return wrong(prev) end
  if foreign(old, 'hash') then return wrong(old) end
end

local function release()
  redis.call('DEL', lease, wake)
  redis.call('RPUSH', wake, '1')
  redis.call('PEXPIRE', wake, wake_ttl)
end

local held = token == '' or holder == token
-- A commit that never opened (flag t) on a free lease holds it for the length of this script.
local free = not held and not holder and string.find(flags, 't', 1, true) ~= nil
if free then held = true end
local tag = commit_id ~= '' and string.sub(redis.sha1hex(commit_id), 1, 16)
if commit_id ~= '' then
  local seen = m[1] == commit_id
  -- Look further back on a retry, and whenever the lease is gone: a commit sent again by
  -- anything below the store (a client library's own retry) finds its lease released by
  -- its first, applied, execution, and must be recognised rather than refused.
  if not seen and (not held or string.find(flags, 'a', 1, true)) then
    local score = redis.pcall('ZSCORE', commits, tag)
    if type(score) == 'table' and score.err then return wrong(commits) end
    seen = score ~= false
  end
  if seen then
    if token ~= '' and held and not free then
      release()
    elseif m[2] then  -- a write, so that a WAIT after it covers the applied attempt too
      redis.call('HSET', meta, 'v', m[2])
    end
    return {2, m[2]}
  end
end
if not held then
  if holder and string.find(flags, 't', 1, true) then return {0, redis.call('PTTL', lease)} end
  return {-3}
end
local hist, refused = history_begin(ARGV[9], KEYS[#KEYS], state, clear_all, 11, last_delete,
  first_set)
if refused then return refused end

-- The first write: the commit's id among the recent ones. A foreign value under that key
-- fails it (pcall) before anything else is written.
if tag then
  local added = redis.pcall('ZADD', commits, (tonumber(m[2]) or 0) + 1, tag)
  if type(added) == 'table' and added.err then return wrong(commits) end
end

-- The stored size, nil while unknown (state written by something else and too large to
-- count here; the next eager open within the limits counts it), less the keys that expired.
local size = tonumber(m[3])
if timed and not clear_all then size = expire_due(state, ttls, size) end
if size == nil and not clear_all and redis.call('HLEN', state) <= field_limit then
  size = 0
  for _, f in ipairs(redis.call('HKEYS', state)) do
    size = size + #f + redis.call('HSTRLEN', state, f)
  end
end

local state_pttl = -1
if record then
  if m[4] then redis.call('UNLINK', prev, old) end
  if clear_all then
    -- The whole prior state, for a replay of this commit, without copying it: rename it.
    if redis.call('EXISTS', state) == 1 then
      state_pttl = redis.call('PTTL', state)
      redis.call('RENAME', state, old)
    end
  else
    for i = 11, #ARGV do
      if i <= last_delete or (i >= first_set and (i - first_set) % 2 == 0) then
        local f = ARGV[i]
        local prior = redis.call('HGET', state, f)
        redis.call('HSET', prev, f, prior and ('+' .. prior) or '-')
      end
    end
  end
elseif m[4] then
  redis.call('UNLINK', prev, old)
  redis.call('HDEL', meta, 'pf')
end

if clear_all then
  if not record then redis.call('UNLINK', state) end
  if timed then redis.call('UNLINK', ttls) end
  timed = false
  size = 0
end
for i = 11, last_delete do
  local f = ARGV[i]
  local len = redis.call('HSTRLEN', state, f)
  if redis.call('HDEL', state, f) == 1 then
    if size then size = size - #f - len end
    if timed then redis.call('ZREM', ttls, ttl_member(f, len)) end
  end
end
for i = first_set, #ARGV, 2 do
  local f, v = ARGV[i], ARGV[i + 1]
  local len = redis.call('HSTRLEN', state, f)
  if timed then redis.call('ZREM', ttls, ttl_member(f, len)) end  -- HSET ends its expiry
  local added = redis.call('HSET', state, f, v)
  if size then
    if added == 1 then size = size + #f end
    size = size + #v - len
  end
  local ttl = expiring[f]
  if ttl then
    local at = now_ms() + ttl
    redis.call('HPEXPIREAT', state, string.format('%.0f', at), 'FIELDS', 1, f)
    redis.call('ZADD', ttls, string.format('%.0f', at), ttl_member(f, #v))
    timed = true
  end
end

local version = (tonumber(m[2]) or 0) + 1
-- t: when the state last changed, in ms of the server's clock (scripts replicate their
-- effects, so a replica stores this same value)
local now = redis.call('TIME')
local fields = {'v', version, 't', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)}
if size then fields[#fields + 1] = 'b'; fields[#fields + 1] = size end
if commit_id ~= '' then fields[#fields + 1] = 'c'; fields[#fields + 1] = commit_id end
if record then fields[#fields + 1] = 'pf'; fields[#fields + 1] = clear_all and 'r' or '0' end
if string.find(flags, 'w', 1, true) then
  fields[#fields + 1] = 'wf'; fields[#fields + 1] = 'completed'
end
redis.call('HSET', meta, unpack(fields))
history_add(hist, version, commit_id, record)
if not size and m[3] then redis.call('HDEL', meta, 'b') end  -- unknown now (see expire_due)
if tag then
  if version % 64 == 0 then redis.call('ZREMRANGEBYSCORE', commits, '-inf', version - RECENT) end
  redis.call('PEXPIRE', commits, 60000)
end

local empty = redis.call('EXISTS', state) == 0  -- right even after another tool wrote
-- When every state key left has an expiry, the state ends with the last of them (HLEN counts
-- a field Redis has not reclaimed yet: then this is found by a later commit).
local last_expiry
if timed and not empty then
  local n_timed = redis.call('ZCARD', ttls)
  if n_timed > 0 and redis.call('HLEN', state) == n_timed then
    last_expiry = tonumber(redis.call('ZRANGE', ttls, -1, -1, 'WITHSCORES')[2])
  end
end
local fading = last_expiry and not m[5] and (m[6] or redis.call('PTTL', meta) == -1)
if expire_ms > 0 then
  redis.call('PEXPIRE', state, expire_ms)
  redis.call('PEXPIRE', meta, expire_ms)
  redis.call('PEXPIRE', prev, expire_ms)
  redis.call('PEXPIRE', old, expire_ms)
  redis.call('PEXPIRE', ttls, expire_ms)
  if m[6] then redis.call('HDEL', meta, 'e') end
elseif empty and not m[5] and (m[6] or redis.call('PTTL', meta) == -1) then
  -- An object left with no state keeps its bookkeeping (version, last commit id and prior
  -- values, which recognise a replay of this commit) for the grace period after its last
  -- commit only.
  redis.call('HSET', meta, 'e', '1')
  redis.call('PEXPIRE', meta, grace_ms)
  redis.call('PEXPIRE', prev, grace_ms)
  redis.call('PEXPIRE', old, grace_ms)
  redis.call('PEXPIRE', ttls, grace_ms)
elseif fading then
  -- the same, after the state's last key expires
  local at = string.format('%.0f', last_expiry + grace_ms)
  redis.call('HSET', meta, 'e', '1')
  redis.call('PEXPIREAT', meta, at)
  redis.call('PEXPIREAT', prev, at)
  redis.call('PEXPIREAT', old, at)
  redis.call('PEXPIREAT', ttls, at)
elseif m[6] and not empty then
  -- state again after a grace period: the bookkeeping is kept as long as the state
  redis.call('HDEL', meta, 'e')
  redis.call('PERSIST', meta)
  redis.call('PERSIST', prev)
  redis.call('PERSIST', old)
  redis.call('PERSIST', ttls)
elseif state_pttl > 0 then
  redis.call('PEXPIRE', state, state_pttl)  -- the expiry the renamed state had
end
history_expire(hist, meta)

if next_token ~= '' and token ~= '' then
  redis.call('SET', lease, next_token, 'PX', wake_ttl)  -- handed over: never free in between
elseif token ~= '' and not free then
  release()
end
return {1, version}
