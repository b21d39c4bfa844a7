-- dump.lua: read one object or workflow whole, for an export: its state exactly as stored,
-- its version, workflow status, time of the last change, the time left until its keys expire
-- and the time left of each state key with an expiry of its own, all at one instant (a script
-- is atomic: no commit falls in between). Writes nothing. Which key and meta field holds what
-- is described in keyspace.py; this script and load.lua are the export's only readers and
-- writers of it.
--
-- KEYS[1] state  KEYS[2] meta  KEYS[3] ttls
-- ARGV[1] field limit  a state with more keys than this is not read whole: the reply says
--                      so, and the caller reads it in pages under the object's lease instead
-- ARGV[2] cursor       "" the whole state; else an HSCAN cursor ("0" to start): one page of
--                      about ARGV[3] state keys (the caller holds the lease, so that the pages
--                      of one read see one state)
-- ARGV[3] page         state keys per page
--
-- Reply: {0}                              nothing to export: no meta (never committed, expired,
--                                         or a state hash another tool wrote without one), or
--                                         an object with no state that is not a workflow
--        {-1, type, key}                  a key of the wrong type
--        {-4, field, value}               a meta field that does not parse
--        {3, n}                           n state keys, over the field limit (nothing read)
--        {1, version, wf, pttl, changed, n, name1, value1, ..., t, name, ms, ...}
--          wf "" for an object; pttl -1 when the keys never expire; changed "" when unknown;
--          n state key, value pairs, then t pairs of a state key and the ms it has left
--        {2, cursor, version, wf, ...}     a page (ARGV[2] given): the cursor that continues
--                                         ("0": the last page), then as above; HSCAN may
--                                         return a state key on two pages

local state, meta, ttls = KEYS[1], KEYS[2], KEYS[3]
local field_limit, cursor, page = tonumber(ARGV[1]), ARGV[2], ARGV[3]

for _, e in ipairs({{state, 'hash'}, {meta, 'hash'}, {ttls, 'zset'}}) do
  local t = redis.call('TYPE', e[1])['ok']
  if t ~= e[2] and t ~= 'none' then return {-1, t, e[1]} end
end
local m = redis.call('HMGET', meta, 'v', 'wf', 't', 'e')
local version, wf, changed = m[1], m[2] or '', m[3] or ''
-- e: the bookkeeping of an object whose state is gone or fading expires after a grace
-- period; that is no expiry of the object (an import derives it again)
local pttl = m[4] and -1 or redis.call('PTTL', meta)
if not version and wf == '' then
  -- no meta, or one without a version: nothing a commit wrote
  if redis.call('EXISTS', meta) == 0 then return {0} end
end
version = version or '0'
if not string.match(version, '^%d+$') then return {-4, 'v', version} end
if changed ~= '' and not string.match(changed, '^%d+$') then return {-4, 't', changed} end

local n = redis.call('HLEN', state)
if n == 0 and wf == '' then return {0} end  -- cleared: not listed, not exported
if n > field_limit and cursor == '' then return {3, n} end

local reply, all = {}, {}
if cursor == '' then
  reply[1] = 1
  if n > 0 then all = redis.call('HGETALL', state) end
else
  local scanned = redis.call('HSCAN', state, cursor, 'COUNT', page)
  reply[1], reply[2], all = 2, scanned[1], scanned[2]
end
for _, v in ipairs({version, wf, pttl, changed, #all / 2}) do
  reply[#reply + 1] = v
end
local names = {}
for i = 1, #all, 2 do
  reply[#reply + 1] = all[i]
  reply[#reply + 1] = all[i + 1]
  names[#names + 1] = all[i]
end

-- The keys with an expiry of their own: only while ttls exists (hash-field expiry, Redis
-- 7.4+ or Valkey 9+; a server without it never has ttls)
local timed = {}
if #names > 0 and redis.call('EXISTS', ttls) == 1 then
  for first = 1, #names, 1000 do
    local last = math.min(first + 999, #names)
    local chunk = {unpack(names, first, last)}
    local left = redis.call('HPTTL', state, 'FIELDS', #chunk, unpack(chunk))
    for i = 1, #chunk do
      if left[i] > 0 then
        timed[#timed + 1] = chunk[i]
        timed[#timed + 1] = left[i]
      end
    end
  end
end
reply[#reply + 1] = #timed / 2
for i = 1, #timed do reply[#reply + 1] = timed[i] end
return reply
