-- dump.lua: read one object or workflow whole, for an export: its state exactly as stored,
-- its version, workflow status, time of the last change, the time left until its keys expire
-- and the time left of each state key with an expiry of its own, all at one instant (a script
-- is atomic: no commit falls in between). Writes nothing (but a keyspace version 1 object,
-- which it moves into its state hash first, as every script does: meta.lua). Which key and
-- reserved field holds what is described in keyspace.py.
--
-- KEYS[1] state  KEYS[2] ttls  KEYS[3] meta, KEYS[4] prev: keyspace version 1's
-- ARGV[1] field limit  a state with more keys than this is not read whole: the reply says
--                      so, and the caller reads it in pages under the object's lease instead
-- ARGV[2] cursor       "" the whole state; else an HSCAN cursor ("0" to start): one page of
--                      about ARGV[3] state keys (the caller holds the lease, so that the pages
--                      of one read see one state)
-- ARGV[3] page         state keys per page
--
-- Reply: {0}                              nothing to export: no bookkeeping (never committed,
--                                         expired, or a state hash another tool wrote), or an
--                                         object with no state that is not a workflow
--        {-1, type, key}                  a key of the wrong type
--        {-4, field, value}               bookkeeping that does not parse
--        {3, n}                           n state keys, over the field limit (nothing read)
--        {1, version, wf, pttl, changed, n, name1, value1, ..., t, name, ms, ...}
--          wf "" for an object; pttl -1 when the keys never expire; changed "" when unknown;
--          n state key, value pairs, then t pairs of a state key and the ms it has left
--        {2, cursor, version, wf, ...}     a page (ARGV[2] given): the cursor that continues
--                                         ("0": the last page), then as above; HSCAN may
--                                         return a state key on two pages

--#include meta.lua

local state, ttls = KEYS[1], KEYS[2]
local field_limit, cursor, page = tonumber(ARGV[1]), ARGV[2], ARGV[3]

for _, e in ipairs({{state, 'hash'}, {ttls, 'zset'}}) do
  local t = redis.call('TYPE', e[1])['ok']
  if t ~= e[2] and t ~= 'none' then return {-1, t, e[1]} end
end
local m, bad = read_meta(state, KEYS[3], KEYS[4])
if not m then return bad end
if not m.stored then return {0} end  -- nothing a commit wrote
local wf = workflow_status(m)
-- e: the bookkeeping of an object whose state is gone or fading expires after a grace
-- period; that is no expiry of the object (an import derives it again)
local pttl = has_flag(m, 'e') and -1 or redis.call('PTTL', state)
local n = user_fields(state, m)
if n == 0 and wf == '' then return {0} end  -- cleared: not listed, not exported
if n > field_limit and cursor == '' then return {3, n} end

local reply, all = {}, {}
if cursor == '' then
  reply[1] = 1
  all = redis.call('HGETALL', state)
else
  local scanned = redis.call('HSCAN', state, cursor, 'COUNT', page)
  reply[1], reply[2], all = 2, scanned[1], scanned[2]
end
local pairs_ = {}
for i = 1, #all, 2 do
  if not reserved(all[i]) then
    pairs_[#pairs_ + 1] = all[i]
    pairs_[#pairs_ + 1] = all[i + 1]
  end
end
all = pairs_
for _, v in ipairs({m.v, wf, pttl, m.t and m.t * 1000 or '', #all / 2}) do
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
