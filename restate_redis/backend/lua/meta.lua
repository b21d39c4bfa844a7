-- meta.lua: an object's bookkeeping, the reserved field "\255" of its state hash, and its
-- prior values, the reserved field "\254" (keyspace.py describes both). open.lua, commit.lua
-- and purge.lua include this text where they say so (scripts.py puts it there).

local META, PRIOR = '\255', '\254'

-- True for a field of the state hash that is bookkeeping, not a state key.
local function reserved(field)
  local b = string.byte(field, 1)
  return b == 255 or b == 254
end

-- The stored form is a MessagePack array [v, b, t, c, flags, prior?] (b -1 while unknown,
-- t in seconds, 0 and c "" for none; c the 6 bytes of the last commit's tag; prior: the
-- prior values of the last recorded commit when they are small, flag q): about 20 bytes, so
-- an idle object costs little more than its state. Larger prior values have a field of
-- their own, "\254" (flag p).
local INLINE_PRIOR = 32  -- packed bytes of prior values kept inside the bookkeeping

local function integer(x)
  return type(x) == 'number' and x >= -1 and x == math.floor(x)
end

-- The bookkeeping of a state hash: a table {v, b, t, c, f} (b, t, c nil when unknown or
-- none; f the flags, "" for none), or nil and the error reply for a value that does not
-- parse. The caller has checked that state is a hash or nothing.
local function parse_meta(raw)
  if not raw then return {v = 0, f = ''} end
  local ok, a = pcall(cmsgpack.unpack, raw)
  if not ok or type(a) ~= 'table' or not integer(a[1]) or a[1] < 0 or not integer(a[2])
      or not integer(a[3]) or type(a[4]) ~= 'string' or type(a[5]) ~= 'string' then
    return nil, {-4, '\\xff', raw}  -- the field, named as printed
  end
  local inline = a[6]
  if inline ~= nil and type(inline) ~= 'table' then return nil, {-4, '\\xff', raw} end
  return {v = a[1], b = a[2] >= 0 and a[2] or nil, t = a[3] > 0 and a[3] or nil,
          c = a[4] ~= '' and a[4] or nil, f = a[5], inline = inline}
end

local function has_flag(m, letter)
  return string.find(m.f, letter, 1, true) ~= nil
end

local function set_flag(m, letter, on)
  local f = string.gsub(m.f, letter, '')
  if on then f = f .. letter end
  m.f = f
end

local function format_meta(m)
  if m.inline and string.find(m.f, 'q', 1, true) then
    return cmsgpack.pack({m.v, m.b or -1, m.t or 0, m.c or '', m.f, m.inline})
  end
  return cmsgpack.pack({m.v, m.b or -1, m.t or 0, m.c or '', m.f})
end

-- The prior values of the last recorded commit (name, "+" value or "-", ...): {} for none.
local function read_prior(state, m)
  if has_flag(m, 'q') then return m.inline or {} end
  if has_flag(m, 'p') then return cmsgpack.unpack(redis.call('HGET', state, PRIOR)) end
  return {}
end

-- Keep prior (a list, or nil for none) as the last recorded commit's prior values: inside the
-- bookkeeping when small, else in "\254". The caller writes the bookkeeping after.
local function keep_prior(state, m, prior)
  local had_field = has_flag(m, 'p')
  m.inline = nil
  set_flag(m, 'p', false)
  set_flag(m, 'q', false)
  if prior then
    local packed = cmsgpack.pack(prior)
    if #packed <= INLINE_PRIOR then
      m.inline = prior
      set_flag(m, 'q', true)
    else
      redis.call('HSET', state, PRIOR, packed)
      set_flag(m, 'p', true)
      return
    end
  end
  if had_field then redis.call('HDEL', state, PRIOR) end
end

local function write_meta(state, m)
  redis.call('HSET', state, META, format_meta(m))
end

-- The number of state keys (the hash's fields less the reserved ones).
local function user_fields(state, m)
  local n = redis.call('HLEN', state)
  if n == 0 then return 0 end
  if m.stored then n = n - 1 end
  if has_flag(m, 'p') then n = n - 1 end
  return n
end

-- The last-commit form of a commit id: what c (and the commits zset) holds, the first 6
-- bytes of its SHA-1; hex() is how replies and arguments name it (keyspace.commit_tag).
local function commit_tag(id)
  return (string.gsub(string.sub(redis.sha1hex(id), 1, 12), '..', function(h)
    return string.char(tonumber(h, 16))
  end))
end

local function hex(bytes)
  return (string.gsub(bytes, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

-- A version 1 object keeps its bookkeeping in hashes of its own (meta, prev): move them into
-- the state hash, atomically, with the expiry they had. Returns nil, or the error reply for a
-- key of the wrong type or a field that does not parse (nothing written then).
local function upgrade_v1(state, v1_meta, v1_prev)
  if redis.call('EXISTS', v1_meta, v1_prev) == 0 then return nil end
  for _, key in ipairs({v1_meta, v1_prev}) do
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'hash' and t ~= 'none' then return {-1, t, key} end
  end
  local old = redis.call('HMGET', v1_meta, 'v', 'b', 't', 'c', 'pf', 'wf', 'e')
  for i, name in ipairs({'v', 'b', 't'}) do
    if old[i] and not string.match(old[i], '^%d+$') then return {-4, name, old[i]} end
  end
  local m = {v = tonumber(old[1]) or 0, b = tonumber(old[2]),
             t = old[3] and math.floor(tonumber(old[3]) / 1000) or nil,
             c = old[4] and commit_tag(old[4]) or nil, f = ''}
  if old[5] == 'r' then m.f = m.f .. 'r' end
  if old[6] == 'running' then m.f = m.f .. 'R' elseif old[6] == 'completed' then
    m.f = m.f .. 'C'
  end
  if old[7] then m.f = m.f .. 'e' end
  local pttl = redis.call('PTTL', v1_meta)
  if old[5] == '0' then
    local prior = redis.call('HGETALL', v1_prev)
    if #prior > 0 then keep_prior(state, m, prior) end
  end
  write_meta(state, m)
  if pttl > 0 and redis.call('PTTL', state) < 0 then redis.call('PEXPIRE', state, pttl) end
  redis.call('UNLINK', v1_meta, v1_prev)
  return nil
end

-- The bookkeeping of state (upgrading a version 1 object first): the table, or nil and an
-- error reply. m.stored: the field exists.
local function read_meta(state, v1_meta, v1_prev)
  local raw = redis.call('HGET', state, META)
  if not raw and v1_meta then
    local failed = upgrade_v1(state, v1_meta, v1_prev)
    if failed then return nil, failed end
    raw = redis.call('HGET', state, META)
  end
  local m, bad = parse_meta(raw)
  if m then m.stored = raw ~= false and raw ~= nil end
  return m, bad
end

-- The workflow status as the open's reply names it.
local function workflow_status(m)
  if has_flag(m, 'C') then return 'completed' end
  if has_flag(m, 'R') then return 'running' end
  return ''
end

-- Release the lease and, when a session waits for it, signal the release (wait is set by a
-- waiter while it waits, so an uncontended object keeps no wake list). Returns 1 when it
-- signalled, else 0.
local function release_lease(lease, wait, wake, wake_ttl)
  redis.call('DEL', lease)
  if redis.call('EXISTS', wait) == 0 then return 0 end
  redis.call('DEL', wake)
  redis.call('RPUSH', wake, '1')
  redis.call('PEXPIRE', wake, wake_ttl)
  return 1
end

-- A session found the lease busy and will wait for its release.
local function mark_waiting(wait, lease, wake_ttl)
  local pttl = redis.call('PTTL', lease)
  redis.call('SET', wait, '1', 'PX', math.max(pttl, 0) + tonumber(wake_ttl))
  return pttl
end
