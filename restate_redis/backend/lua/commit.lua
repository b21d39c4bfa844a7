-- commit.lua: apply all writes of one session atomically, then release its lease.
-- Everything that can fail is checked before the first write (the type of every key it
-- touches, the lease, the bookkeeping), so a rejected commit writes nothing. Its work is
-- bounded by the size of the commit, never by the size of the stored state: a clear_all
-- unlinks or renames the hash, and a state of unknown size is counted only when it is
-- within the field limit. The keyspace (every key and reserved field) is described in
-- keyspace.py.
--
-- KEYS[1] state  KEYS[2] lease  KEYS[3] wait  KEYS[4] wake  KEYS[5] commits  KEYS[6] old
-- KEYS[7] ttls  KEYS[8] meta, KEYS[9] prev: keyspace version 1's, moved into state when found
-- KEYS[10] history (only with history on)
-- ARGV[1] token        the session's lease token; "" for an unfenced commit
-- ARGV[2] commit id    "" or a unique id; a second commit with the same id is not applied
--                      while it is the last commit (c) or, for a retry or when the lease
--                      is no longer held, in commits, so a commit sent again after its first
--                      attempt applied is recognised even after other sessions committed in
--                      between
-- ARGV[3] flags        letters: c clear every stored key first, r record prior values (for
--                      replays: in the reserved field "\254", or for a clear_all the whole
--                      state renamed to old),
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
-- Reply: {1, version, signalled} applied (signalled: 1 when the release woke a waiting
--        session, see meta.lua); {2, version, signalled} this commit id was already applied (the lease
--        is released all the same; a {2} reply always writes something, so that a WAIT sent
--        after it on the same connection covers the earlier, applied attempt too);
--        {0, lease pttl} (flag t) another session holds the lease;
--        {-3} the lease is no longer held by token; {-1, type, key} a key of the wrong type;
--        {-4, field, value} bookkeeping that does not parse; {-5, server, error} an expiry
--        asked of a server without hash-field expiry (nothing written)
--#include expiry.lua
--#include meta.lua
--#include history.lua

local state, lease, wait, wake, commits = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local old, ttls = KEYS[6], KEYS[7]
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

-- Reads first: a key of the wrong type fails them before anything is written (a version 1
-- object is moved in place first, all or nothing).
if foreign(state, 'hash') then return wrong(state) end
local holder = token ~= '' and redis.pcall('GET', lease)
if type(holder) == 'table' and holder.err then return wrong(lease) end
if foreign(wake, 'list') then return wrong(wake) end
if foreign(wait, 'string') then return wrong(wait) end
local ttls_type = redis.call('TYPE', ttls)['ok']
if ttls_type ~= 'zset' and ttls_type ~= 'none' then return wrong(ttls) end
if (record or clear_all) and foreign(old, 'hash') then return wrong(old) end
local m, bad = read_meta(state, KEYS[8], KEYS[9])
if not m then return bad end
if has_flag(m, 'r') and foreign(old, 'hash') then return wrong(old) end
local timed = ttls_type == 'zset'  -- some state keys have an expiry of their own
local expiring = {}  -- state key -> ttl ms
for i = first_ttl, first_set - 1, 2 do expiring[ARGV[i]] = tonumber(ARGV[i + 1]) end
if first_set > first_ttl then
  local refused = field_expiry_refused(state)
  if refused then return {-5, server_name(), refused} end
end

local held = token == '' or holder == token
-- A commit that never opened (flag t) on a free lease holds it for the length of this script.
local free = not held and not holder and string.find(flags, 't', 1, true) ~= nil
if free then held = true end
local tag = commit_id ~= '' and commit_tag(commit_id)
if tag then
  local seen = m.c == tag
  -- Look further back on a retry, and whenever the lease is gone: a commit sent again by
  -- anything below the store (a client library's own retry) finds its lease released by
  -- its first, applied, execution, and must be recognised rather than refused.
  if not seen and (not held or string.find(flags, 'a', 1, true)) then
    local score = redis.pcall('ZSCORE', commits, tag)
    if type(score) == 'table' and score.err then return wrong(commits) end
    seen = score ~= false
  end
  if seen then
    local signalled = 0
    if token ~= '' and held and not free then
      signalled = release_lease(lease, wait, wake, wake_ttl)
    elseif m.stored then  -- a write, so that a WAIT after it covers the applied attempt too
      write_meta(state, m)
    end
    return {2, m.v, signalled}
  end
end
if not held then
  if holder and string.find(flags, 't', 1, true) then
    return {0, mark_waiting(wait, lease, wake_ttl)}
  end
  return {-3}
end
local hist, refused = history_begin(ARGV[9], KEYS[10], state, clear_all, 11, last_delete,
  first_set)
if refused then return refused end

-- The first write: the commit's id among the recent ones. A foreign value under that key
-- fails it (pcall) before anything else is written.
if tag then
  local added = redis.pcall('ZADD', commits, m.v + 1, tag)
  if type(added) == 'table' and added.err then return wrong(commits) end
end

-- The stored size, nil while unknown (state written by something else and too large to
-- count here; the next eager open within the limits counts it), less the keys that expired.
local size = m.b
if timed and not clear_all then size = expire_due(state, ttls, size) end
if size == nil and not clear_all and user_fields(state, m) <= field_limit then
  size = 0
  for _, f in ipairs(redis.call('HKEYS', state)) do
    if not reserved(f) then size = size + #f + redis.call('HSTRLEN', state, f) end
  end
end

-- The state key's own expiry (an object ttl, a retention, the grace), kept across a clear_all.
local state_pttl = -1
if clear_all then state_pttl = redis.call('PTTL', state) end
if has_flag(m, 'r') then redis.call('UNLINK', old) end
local prior
if record then
  if clear_all then
    -- The whole prior state, for a replay of this commit, without copying it: rename it.
    if redis.call('EXISTS', state) == 1 then redis.call('RENAME', state, old) end
  else
    prior = {}
    for i = 11, #ARGV do
      if i <= last_delete or (i >= first_set and (i - first_set) % 2 == 0) then
        local f = ARGV[i]
        local value = redis.call('HGET', state, f)
        prior[#prior + 1] = f
        prior[#prior + 1] = value and ('+' .. value) or '-'
      end
    end
  end
end
set_flag(m, 'r', record and clear_all)

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

-- The bookkeeping. t: when the state last changed, in seconds of the server's clock (scripts
-- replicate their effects, so a replica stores this same value).
m.v = m.v + 1
m.t = math.floor(now_ms() / 1000)
m.b = size
if tag then m.c = tag end
if string.find(flags, 'w', 1, true) then set_flag(m, 'C', true); set_flag(m, 'R', false) end
if clear_all then set_flag(m, 'p', false) end  -- the hash it was in is gone (or renamed)
keep_prior(state, m, prior)
write_meta(state, m)
m.stored = true
history_add(hist, m.v, commit_id, record)
if tag then
  if m.v % 64 == 0 then redis.call('ZREMRANGEBYSCORE', commits, '-inf', m.v - RECENT) end
  redis.call('PEXPIRE', commits, 60000)
end

local count = user_fields(state, m)  -- right even after another tool wrote
local empty = count == 0
-- When every state key left has an expiry, the state ends with the last of them (HLEN counts
-- a field Redis has not reclaimed yet: then this is found by a later commit).
local last_expiry
if timed and not empty then
  local n_timed = redis.call('ZCARD', ttls)
  if n_timed > 0 and count == n_timed then
    last_expiry = tonumber(redis.call('ZRANGE', ttls, -1, -1, 'WITHSCORES')[2])
  end
end
local workflow = has_flag(m, 'R') or has_flag(m, 'C')
local grace = has_flag(m, 'e')
local unexpiring = grace or (state_pttl < 0 and redis.call('PTTL', state) == -1)
local function expire_all(ms, at)
  for _, key in ipairs({state, old, ttls}) do
    if at then redis.call('PEXPIREAT', key, at) else redis.call('PEXPIRE', key, ms) end
  end
end
if expire_ms > 0 then
  if grace then set_flag(m, 'e', false); write_meta(state, m) end
  expire_all(expire_ms)
elseif empty and not workflow and unexpiring then
  -- An object left with no state keeps its bookkeeping (version, last commit and prior
  -- values, which recognise a replay of this commit) for the grace period after its last
  -- commit only.
  set_flag(m, 'e', true)
  write_meta(state, m)
  expire_all(grace_ms)
elseif last_expiry and not workflow and unexpiring then
  -- the same, after the state's last key expires
  set_flag(m, 'e', true)
  write_meta(state, m)
  expire_all(nil, string.format('%.0f', last_expiry + grace_ms))
elseif grace and not empty then
  -- state again after a grace period: the bookkeeping is kept as long as the state
  set_flag(m, 'e', false)
  write_meta(state, m)
  for _, key in ipairs({state, old, ttls}) do redis.call('PERSIST', key) end
elseif state_pttl > 0 then
  redis.call('PEXPIRE', state, state_pttl)  -- the expiry the state had before the clear_all
end
history_expire(hist, state)

local signalled = 0
if next_token ~= '' and token ~= '' then
  redis.call('SET', lease, next_token, 'PX', wake_ttl)  -- handed over: never free in between
elseif token ~= '' and not free then
  signalled = release_lease(lease, wait, wake, wake_ttl)
end
return {1, m.v, signalled}
