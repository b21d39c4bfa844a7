-- scan.lua: the state keys (or keys and values) of one hash, in pages of bounded work.
-- A hash of at most WHOLE fields comes whole in the first page (one atomic read); a larger
-- one comes by HSCAN pages of about COUNT fields, so no call blocks the server for long on a
-- huge state.
--
-- KEYS[1] the state hash (or the prior state renamed to old, for a replay)
-- ARGV[1] cursor    "0" to start
-- ARGV[2] whole     the most fields read in one page
-- ARGV[3] values    "1": field, value pairs; "0": field names only
-- ARGV[4] count     the COUNT of each HSCAN
--
-- Reply: {next cursor ("0" when done), items}

local key, cursor, whole, count = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[4]
local values = ARGV[3] == '1'
if cursor == '0' and redis.call('HLEN', key) <= whole then
  if values then return {'0', redis.call('HGETALL', key)} end
  return {'0', redis.call('HKEYS', key)}
end
local page = redis.call('HSCAN', key, cursor, 'COUNT', count)
if values then return page end
local names = {}
for i = 1, #page[2], 2 do names[#names + 1] = page[2][i] end
return {page[1], names}
