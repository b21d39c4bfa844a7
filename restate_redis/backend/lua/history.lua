-- history.lua: an object's history, one Stream entry per applied commit, written by
-- commit.lua in the same script as the commit, so there is never a commit without its entry
-- or an entry without its commit. commit.lua includes this text where it says so (scripts.py
-- puts it there, after expiry.lua and meta.lua, whose now_ms and reserved it uses). The history key is described in
-- keyspace.py; restate_redis/history.py reads the entries.
--
-- spec (commit.lua's ARGV[9]): "" when history is off: nothing here runs and no key is
-- touched. Else "max_versions max_age_ms max_entry_bytes origin". max_versions 0: an entry
-- only into a log that exists already, and no trimming (an edit by a tool whose store does
-- not know the object's history limits: the object's own writers trim it by theirs).
--
-- An entry (XADD, id * : the server's clock, in ms):
--   v <version>  o <origin>  c <commit id>  x <flags>  d <changes>  [p <prior version>]
-- p: the version the object had before, when it is not version - 1 (an import keeps the
--    version of its record)
-- flags: "n" the caller named the commit id (else the store made it up), "a" a clear_all,
--        "k" the values are not kept (the entry was over max_entry_bytes: names only)
-- changes: per changed state key, concatenated:
--   <#name>:<name><old mark><new mark><#old>:<#new>:<old><new>
--   mark "+" the key held the value, "-" it did not exist, "?" not kept (its length 0)
-- A clear_all lists every key the state held, with its prior value, so that a restore can go
-- back past it. The work is that of the commit, and for a clear_all the size of the state.

-- The changed keys and their prior values, read before the commit writes anything; nil when
-- history is off for this commit. Second result: commit.lua's refusal (nothing written yet).
local function history_begin(spec, key, state, clear_all, first_delete, last_delete, first_set,
    last_set)
  if spec == '' then return nil end
  local max_versions, max_age, max_bytes, origin =
    string.match(spec, '^(%d+) (%d+) (%d+) (%S+)$')
  if not origin then return nil, redis.error_reply('bad history spec: ' .. spec) end
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'stream' and t ~= 'none' then return nil, {-1, t, key} end
  max_versions = tonumber(max_versions)
  if max_versions == 0 and t == 'none' then return nil end
  local h = {key = key, max_versions = max_versions, max_age = tonumber(max_age),
    origin = origin, clear_all = clear_all, names = {}, old = {}, new = {}, kept = true}
  local seen, size = {}, 0
  local function change(name, new)
    if not seen[name] then
      seen[name] = true
      h.names[#h.names + 1] = name
      h.old[name] = false
      size = size + #name + 16
    end
    h.new[name] = new
  end
  local limit = tonumber(max_bytes)
  if clear_all then
    -- every prior key: sizes first, so that a large state is not copied when over the limit
    for _, f in ipairs(redis.call('HKEYS', state)) do
      if not reserved(f) then  -- the bookkeeping is not state (meta.lua)
        change(f, false)
        size = size + redis.call('HSTRLEN', state, f)
      end
    end
  end
  local known = #h.names  -- a clear_all's prior keys, whose old values are read below
  for i = first_delete, last_delete do change(ARGV[i], false) end
  for i = first_set, last_set or #ARGV, 2 do
    change(ARGV[i], ARGV[i + 1])
    size = size + #ARGV[i + 1]
  end
  -- the prior values: a clear_all's over the limit are not read at all
  local asked = {}
  for i = 1, clear_all and known or #h.names do asked[i] = h.names[i] end
  if clear_all and size > limit then
    h.kept = false
    return h
  end
  for i = 1, #asked, 1000 do  -- HMGET in slices: unpack has a limit
    local slice = {}
    for j = i, math.min(i + 999, #asked) do slice[#slice + 1] = asked[j] end
    local vals = redis.call('HMGET', state, unpack(slice))
    for j = 1, #slice do
      h.old[slice[j]] = vals[j]
      if vals[j] and not clear_all then size = size + #vals[j] end
    end
  end
  if size > limit then h.kept = false end
  return h
end

-- Append the entry of the applied commit (version, its commit id; named: the caller gave it)
-- and trim the log by count and age.
local function history_add(h, version, commit_id, named, prior_version)
  if not h then return end
  local flags = (named and 'n' or '') .. (h.clear_all and 'a' or '') .. (h.kept and '' or 'k')
  local parts = {}
  for _, name in ipairs(h.names) do
    local old, new = h.old[name], h.new[name]
    local om, nm = old and '+' or '-', new and '+' or '-'
    if not h.kept then
      om, nm, old, new = '?', '?', false, false
    end
    old, new = old or '', new or ''
    parts[#parts + 1] = #name .. ':' .. name .. om .. nm .. #old .. ':' .. #new .. ':' .. old .. new
  end
  local fields = {'v', version, 'o', h.origin, 'c', commit_id, 'x', flags, 'd',
    table.concat(parts)}
  if prior_version and prior_version ~= version - 1 then
    fields[#fields + 1] = 'p'
    fields[#fields + 1] = prior_version
  end
  if h.max_versions > 0 then
    redis.call('XADD', h.key, 'MAXLEN', '~', h.max_versions, '*', unpack(fields))
    if h.max_age > 0 then
      redis.call('XTRIM', h.key, 'MINID', '~', string.format('%.0f', now_ms() - h.max_age))
    end
  else
    redis.call('XADD', h.key, '*', unpack(fields))
  end
end

-- The log expires with the object's hash (its bookkeeping): whatever expiry that has now.
local function history_expire(h, state)
  if not h then return end
  local pttl = redis.call('PTTL', state)
  if pttl > 0 then
    redis.call('PEXPIRE', h.key, pttl)
  elseif pttl == -1 then
    redis.call('PERSIST', h.key)
  end
end
