-- open.lua: open a session on one object or workflow; one round trip.
-- Takes the exclusive lease (when a token is given) and reads the state the mode asks for.
-- Every key it touches is type-checked before its first write, and its work is bounded:
-- a state over the eager limits (fields or bytes) is not loaded, and is never counted.
-- The keyspace (every key and reserved field) is described in keyspace.py.
--
-- KEYS[1] state  KEYS[2] lease  KEYS[3] wait  KEYS[4] old  KEYS[5] ttls
-- KEYS[6] meta, KEYS[7] prev: keyspace version 1's, moved into state when found (meta.lua)
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
--        {-4, field, value}              bookkeeping that does not parse
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
--#include meta.lua

local state, lease, wait, old, ttls = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
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
if token ~= '' and foreign(wait, 'string') then return wrong(wait) end

-- Reads before any write (a version 1 object is moved in place first, all or nothing).
local m, bad = read_meta(state, KEYS[6], KEYS[7])
if not m then return bad end
local version, bytes, last_commit, wf = tostring(m.v), m.b, m.c, workflow_status(m)
local commit_reply = last_commit and hex(last_commit) or ''
local replay = commit_id ~= '' and last_commit == commit_tag(commit_id)
if replay and has_flag(m, 'r') and foreign(old, 'hash') then return wrong(old) end

if ARGV[5] == '1' and wf == 'completed' and not replay then
  return {-2}
end

if token ~= '' then
  if not redis.call('SET', lease, token, 'NX', 'PX', ARGV[2]) then  -- NX: no write when taken
    local holder = redis.pcall('GET', lease)
    if type(holder) == 'table' and holder.err then return wrong(lease) end
    if holder ~= token then
      return {0, mark_waiting(wait, lease, ARGV[2])}
    end
    redis.call('PEXPIRE', lease, ARGV[2])
  end
  if ARGV[5] == '1' and wf == '' then
    set_flag(m, 'R', true)
    write_meta(state, m)
    m.stored = true
    wf = 'running'
  end
end

-- Keys that expired on their own leave the stored size.
local ahead, expired = -1, false
if timed == 'zset' then
  expired = redis.call('ZCOUNT', ttls, '-inf', string.format('%.0f', now_ms())) > 0
  local size = expire_due(state, ttls, bytes)
  if size ~= bytes then
    m.b = size
    write_meta(state, m)
    bytes = size
  end
  ahead = next_expiry(ttls)
end

-- Appends the state keys of hash pairs all (field, value, ...) to reply.
local function append_state(reply, all)
  for i = 1, #all, 2 do
    if not reserved(all[i]) then
      reply[#reply + 1] = all[i]
      reply[#reply + 1] = all[i + 1]
    end
  end
  return reply
end

-- A replay of a commit that already applied sees the state as it was before that commit.
if replay then
  if has_flag(m, 'r') then  -- a clear_all: the whole state before it was renamed to old
    if redis.call('HLEN', old) > field_limit + 2 then
      return {1, version, wf, 'lazy', 3, commit_reply, ahead}
    end
    return append_state({1, version, wf, 'eager', 1, commit_reply, ahead},
      redis.call('HGETALL', old))
  end
  local p = read_prior(state, m)
  if user_fields(state, m) > field_limit then
    local reply = {1, version, wf, 'lazy', 2, commit_reply, ahead}
    for i = 1, #p do reply[#reply + 1] = p[i] end
    return reply
  end
  local view = {}
  local cur = redis.call('HGETALL', state)
  for i = 1, #cur, 2 do
    if not reserved(cur[i]) then view[cur[i]] = cur[i + 1] end
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
if last_commit and not expired and ARGV[8] == version and ARGV[9] == commit_reply
    and user_fields(state, m) == tonumber(ARGV[10]) then
  return {1, version, wf, 'cached', 0, commit_reply, ahead}
end

local reply = {1, version, wf, mode, 0, commit_reply, ahead}
if mode == 'eager' then
  -- the field count (HLEN: O(1), and right even after another tool wrote the hash) and the
  -- stored size decide
  local n = user_fields(state, m)
  if n > field_limit or (bytes and bytes > byte_limit) then
    reply[4] = 'lazy'
    return reply
  end
  local all = redis.call('HGETALL', state)
  append_state(reply, all)
  if not bytes and n > 0 then
    -- state written by something else: count it once (bounded by the field limit) and keep
    -- the count, so no later open counts again
    local size = 0
    for i = 8, #reply do size = size + #reply[i] end
    m.b = size
    write_meta(state, m)
    if size > byte_limit then
      return {1, version, wf, 'lazy', 0, commit_reply, ahead}
    end
  end
elseif #ARGV > 10 then
  local vals = redis.call('HMGET', state, unpack(ARGV, 11))
  for i = 1, #ARGV - 10 do reply[#reply + 1] = vals[i] end
end
return reply
