-- open.lua: open a session on one object or workflow; one round trip.
-- Takes the exclusive lease (when a token is given) and reads the state the mode asks for.
--
-- KEYS[1] state   hash of the object's state (field = state key)
-- KEYS[2] meta    hash: v version, b stored bytes, c last commit id, wf workflow status,
--                 pf "1" when prev holds a whole snapshot
-- KEYS[3] lease   string: the holder's token, expiring after the lease ttl
-- KEYS[4] prev    hash: prior values of the last recorded commit ("+" .. value, or "-" absent)
-- ARGV[1] token         "" for a shared (read-only) session: no lease
-- ARGV[2] lease ttl ms
-- ARGV[3] mode          "eager" | "lazy" | "preload"
-- ARGV[4] eager limit   bytes; an eager session over it falls back to lazy (0: no limit)
-- ARGV[5] run           "1" for a workflow run session: refuse a completed workflow
-- ARGV[6] commit id     "" or the id of this session's commit, to recognise a replay
-- ARGV[7..] names       state keys to preload (mode "preload")
--
-- Reply: {0, lease pttl}                 the lease is held by another session
--        {-1, type}                      the state key holds a non-hash type
--        {-2}                            the workflow's run already completed
--        {1, version, wf, mode, replayed, ...data}
--          data: eager / replay -> field, value, field, value ...; preload -> one value or
--          false per name; lazy -> nothing

local state, meta, lease, prev = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, mode, commit_id = ARGV[1], ARGV[3], ARGV[6]

local t = redis.call('TYPE', state)['ok']
if t ~= 'hash' and t ~= 'none' then
  return {-1, t}
end

local m = redis.call('HMGET', meta, 'v', 'b', 'c', 'wf', 'pf')
local version, bytes, last_commit, wf, pf = m[1] or '0', m[2], m[3], m[4] or '', m[5]

if ARGV[5] == '1' and wf == 'completed' and not (commit_id ~= '' and last_commit == commit_id) then
  return {-2}
end

if token ~= '' then
  if not redis.call('SET', lease, token, 'NX', 'PX', ARGV[2]) then
    if redis.call('GET', lease) ~= token then
      return {0, redis.call('PTTL', lease)}
    end
    redis.call('PEXPIRE', lease, ARGV[2])
  end
  if ARGV[5] == '1' and wf == '' then
    redis.call('HSET', meta, 'wf', 'running')
    wf = 'running'
  end
end

-- A replay of a commit that already applied sees the state as it was before that commit.
if commit_id ~= '' and last_commit == commit_id then
  local view = {}
  if pf ~= '1' then
    local cur = redis.call('HGETALL', state)
    for i = 1, #cur, 2 do view[cur[i]] = cur[i + 1] end
  end
  local p = redis.call('HGETALL', prev)
  for i = 1, #p, 2 do
    local v = p[i + 1]
    if string.sub(v, 1, 1) == '+' then view[p[i]] = string.sub(v, 2) else view[p[i]] = nil end
  end
  local reply = {1, version, wf, 'eager', 1}
  for f, v in pairs(view) do
    reply[#reply + 1] = f
    reply[#reply + 1] = v
  end
  return reply
end

local reply = {1, version, wf, mode, 0}
if mode == 'eager' then
  local limit = tonumber(ARGV[4])
  if limit > 0 and t == 'hash' then
    local size = tonumber(bytes)
    if size == nil then
      size = 0
      for _, f in ipairs(redis.call('HKEYS', state)) do
        size = size + #f + redis.call('HSTRLEN', state, f)
      end
    end
    if size > limit then
      reply[4] = 'lazy'
      return reply
    end
  end
  local all = redis.call('HGETALL', state)
  for i = 1, #all do reply[#reply + 1] = all[i] end
elseif mode == 'preload' and #ARGV > 6 then
  local vals = redis.call('HMGET', state, unpack(ARGV, 7))
  for i = 1, #ARGV - 6 do reply[#reply + 1] = vals[i] end
end
return reply
