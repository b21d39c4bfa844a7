-- purge.lua: remove an object or workflow entirely, bookkeeping included, under its lease,
-- so that its key (a completed workflow's id) can be used again; then release the lease.
-- The keyspace (every key and reserved field) is described in keyspace.py.
--
-- KEYS[1] state  KEYS[2] lease  KEYS[3] wait  KEYS[4] wake  KEYS[5] commits  KEYS[6] old
-- KEYS[7] ttls  KEYS[8] meta, KEYS[9] prev: keyspace version 1's  KEYS[10] history
-- ARGV[1] token        the session's lease token
-- ARGV[2] wake ttl ms  how long an unclaimed release signal is kept
--
-- Reply: {1, n} purged, n = how many of state, commits, old, ttls (and version 1's meta,
--        prev) existed; {-3} the lease is no longer held by token; {-1, type, key} a key of
--        the wrong type
--#include meta.lua

local lease, wait, wake = KEYS[2], KEYS[3], KEYS[4]
for _, e in ipairs({{lease, 'string'}, {wait, 'string'}, {wake, 'list'}}) do
  local t = redis.call('TYPE', e[1])['ok']
  if t ~= e[2] and t ~= 'none' then return {-1, t, e[1]} end
end
if redis.call('GET', lease) ~= ARGV[1] then
  return {-3}
end
-- UNLINK: a large state is freed in the background, not inside this script
local n = redis.call('UNLINK', KEYS[1], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
redis.call('UNLINK', KEYS[10])  -- the history goes too: the next commit is version 1 again
release_lease(lease, wait, wake, ARGV[2])
return {1, n}
