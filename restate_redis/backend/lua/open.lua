-- open.lua: open a session on one object or workflow; one round trip.
-- Takes the exclusive lease (when a token is given) and reads the state the mode asks for.
-- Every key it touches is type-checked before its first write, and its work is bounded:
-- a state over the eager limits (fields or bytes) is not loaded, and is never counted.
-- The keyspace (every key and meta field) is described in keyspace.py.
--
-- KEYS[1] state  KEYS[2] meta  KEYS[3] lease  KEYS[4] prev  KEYS[5] old  KEYS[6] ttls
-- ARGV[1] token         "" for a shared (read-only) session: no lease
-- ARGV[2] lease ttl ms
-- ARGV[3] mode          "eager" | "lazy" | "preload"
-- ARGV[4] eager limit   bytes; an eager session over it falls back to lazy
-- ARGV[5] run           "1" for a workflow run session: refuse a completed workflow
-- ARGV[6] commit id     "" or the id of this session's commit, to recognise a replay
-- ARGV[7] field limit   an eager session on more state keys than this falls back to lazy
-- ARGV[8] cached version  the version of the snapshot the caller holds ("" for none)
-- ARGV[9] cached commit   the last commit id of that snapshot
-- ARGV[10] cached keys    its number of state keys
-- ARGV[11..] names      state keys to read now (mode "preload", or "lazy": its first reads)
--
-- Reply: {0, lease pttl}                 the lease is held by another session
--        {-1, type, key}                 key holds a type this library never writes there
--        {-2}                            the workflow's run already completed
--        {-4, field, value}              a meta field that does not parse
--        {1, version, wf, mode, replay, last commit id, expires in, ...data}
--          expires in: ms until the earliest expiry of a state key (-1: none has one); what
--                    the reply holds is right until then
--          replay 0: data: eager -> field, value, ...; preload, lazy -> one value or false
--                    per name; mode "cached": nothing, the caller's snapshot is the state
--                    (same version and last commit id: each commit's id is unique, so a
--                    recreated object or a failover that lost a commit cannot match; the
--                    same number of keys, so keys another tool added or removed show; and
--                    no key expired since)
--          replay 1: a replay, data: the whole state before the replayed commit (pairs)
--          replay 2: a replay too large to load: data: the prior values of the keys the
--                    replayed commit changed (field, "+" .. value or "-"); the rest reads
--                    from state
--          replay 3: a replay too large to load: the state before the commit reads from old
--
-- State keys whose expiry passed leave the stored size here (expiry.lua), before the eager
-- size limit is checked.
--#include expiry.lua

local state, meta, lease, prev, old, ttls = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local token, mode, commit_id = ARGV[1], ARGV[3], ARGV[6]
local byte_limit, field_limit = tonumber(ARGV[4]), tonumber(ARGV[7])

local function wrong(key)
  return {-1, redis.call('TYPE', key)['ok'], key}
end
local function foreign(key, want)
  local t = redis.call('TYPE', key)['ok']
  return t ~= want and t ~= 'none'
end
if foreign(state, 'hash') then return wrong(state) end
local timed = redis.call('TYPE', ttls)['ok']  -- "zset" while some keys have an expiry
if timed ~= 'zset' and timed ~= 'none' then return wrong(ttls) end

-- Reads before any write: a key of the wrong type fails them (pcall), and nothing is written.
local m = redis.pcall('HMGET', meta, 'v', 'b', 'c', 'wf', 'pf')
if m.err then return wrong(meta) end
local version, bytes, last_commit, wf, pf = m[1] or '0', m[2], m[3], m[4] or '', m[5]
local commit_reply = last_commit or ''
if not string.match(version, '^%d+$') then return {-4, 'v', version} end
if bytes and not string.match(bytes, '^%d+$') then return {-4, 'b', bytes} end
local replay = commit_id ~= '' and last_commit == commit_id
if replay then
  if foreign(prev, 'hash') then return wrong(prev) end
  if foreign(old, 'hash') then return wrong(old) end
end

if ARGV[5] == '1' and wf == 'completed' and not replay then
  return {-2}
end

if token ~= '' then
  if not redis.call('SET', lease, token, 'NX', 'PX', ARGV[2]) then  -- NX: no write when taken
    local holder = redis.pcall('GET', lease)
    if type(holder) == 'table' and holder.err then return wrong(lease) end
    if holder ~= token then
      return {0, redis.call('PTTL', lease)}
    end
    redis.call('PEXPIRE', lease, ARGV[2])
  end
  if ARGV[5] == '1' and wf == '' then
    redis.call('HSET', meta, 'wf', 'running')
    wf = 'running'
  end
end

-- Keys that expired on their own leave the stored size.
local ahead, expired = -1, false
if timed == 'zset' then
  expired = redis.call('ZCOUNT', ttls, '-inf', string.format('%.0f', now_ms())) > 0
  local size = expire_due(state, ttls, tonumber(bytes))
  if size ~= tonumber(bytes) then
    if size then redis.call('HSET', meta, 'b', size) else redis.call('HDEL', meta, 'b') end
    bytes = size and tostring(size) or nil
  end
  ahead = next_expiry(ttls)
end

-- A replay of a commit that already applied sees the state as it was before that commit.
if replay then
  if pf == 'r' then  -- a clear_all: the whole state before it was renamed to old
    if redis.call('HLEN', old) > field_limit then
      return {1, version, wf, 'lazy', 3, commit_reply, ahead}
    end
    local reply = {1, version, wf, 'eager', 1, commit_reply, ahead}
    local all = redis.call('HGETALL', old)
    for i = 1, #all do reply[#reply + 1] = all[i] end
    return reply
  end
  local p = redis.call('HGETALL', prev)
  if pf ~= '1' and redis.call('HLEN', state) > field_limit then
    local reply = {1, version, wf, 'lazy', 2, commit_reply, ahead}
    for i = 1, #p do reply[#reply + 1] = p[i] end
    return reply
  end
  local view = {}
  if pf ~= '1' then  -- "1": prev holds the whole prior state (written by earlier versions)
    local cur = redis.call('HGETALL', state)
    for i = 1, #cur, 2 do view[cur[i]] = cur[i + 1] end
  end
  for i = 1, #p, 2 do
    local v = p[i + 1]
    if string.sub(v, 1, 1) == '+' then view[p[i]] = string.sub(v, 2) else view[p[i]] = nil end
  end
  local reply = {1, version, wf, 'eager', 1, commit_reply, ahead}
  for f, v in pairs(view) do
    reply[#reply + 1] = f
    reply[#reply + 1] = v
  end
  return reply
end

-- The caller's snapshot is still the state: nothing to send.
if last_commit and not expired and ARGV[8] == version and ARGV[9] == last_commit
    and redis.call('HLEN', state) == tonumber(ARGV[10]) then
  return {1, version, wf, 'cached', 0, commit_reply, ahead}
end

local reply = {1, version, wf, mode, 0, commit_reply, ahead}
if mode == 'eager' then
  -- HLEN (O(1), and right even after another tool wrote the hash) and the stored size decide
  local n = redis.call('HLEN', state)
  if n > field_limit or (bytes and tonumber(bytes) > byte_limit) then
    reply[4] = 'lazy'
    return reply
  end
  local all = redis.call('HGETALL', state)
  if not bytes and n > 0 then
    -- state written by something else: count it once (bounded by the field limit) and keep
    -- the count, so no later open counts again
    local size = 0
    for i = 1, #all do size = size + #all[i] end
    redis.call('HSET', meta, 'b', size)
    if size > byte_limit then
      reply[4] = 'lazy'
      return reply
    end
  end
  for i = 1, #all do reply[#reply + 1] = all[i] end
elseif #ARGV > 10 then
  local vals = redis.call('HMGET', state, unpack(ARGV, 11))
  for i = 1, #ARGV - 10 do reply[#reply + 1] = vals[i] end
end
return reply
