-- scan.lua: the state keys (or keys and values) of one hash, in pages of bounded work.
-- A hash of at most WHOLE fields comes whole in the first page (one atomic read); a larger
-- one comes by HSCAN pages of about COUNT fields, so no call blocks the server for long on a
-- huge state. The hash's reserved fields (bookkeeping, keyspace.py) are left out.
--
-- KEYS[1] the state hash (or the prior state renamed to old, for a replay)
-- ARGV[1] cursor    "0" to start
-- ARGV[2] whole     the most fields read in one page
-- ARGV[3] values    "1": field, value pairs; "0": field names only
-- ARGV[4] count     the COUNT of each HSCAN
--
-- Reply: {next cursor ("0" when done), items}

--#include meta.lua

local key, cursor, whole, count = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[4]
local values = ARGV[3] == '1'
local items = {}
if cursor == '0' and redis.call('HLEN', key) <= whole + 2 then  -- + the reserved fields
  if values then
    local all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do
      if not reserved(all[i]) then
        items[#items + 1] = all[i]
        items[#items + 1] = all[i + 1]
      end
    end
  else
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if not reserved(f) then items[#items + 1] = f end
    end
  end
  return {'0', items}
end
local page = redis.call('HSCAN', key, cursor, 'COUNT', count)
for i = 1, #page[2], 2 do
  if not reserved(page[2][i]) then
    items[#items + 1] = page[2][i]
    if values then items[#items + 1] = page[2][i + 1] end
  end
end
return {page[1], items}
