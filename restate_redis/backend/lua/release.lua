-- release.lua: give up the exclusive lease without writing, and wake a waiter if one waits.
--
-- KEYS[1] lease   string: the holder's token
-- KEYS[2] wake    list: one element per release, popped by a waiter's BLPOP
-- KEYS[3] wait    string: set while a session waits for the lease
-- ARGV[1] token   the releasing session's token
-- ARGV[2] ttl ms  how long an unclaimed release signal, or a handed-over lease, is kept
-- ARGV[3] next token  (optional) a session of the same store waiting for the object: the
--                 lease is handed to it (its token written into the lease) instead of released
--
-- Reply: 1 released; 2 released, and a waiting session signalled; 0 the lease was not held
--        by token (expired or taken over);
--        {-1, type, key} a key of the wrong type (nothing written)
--#include meta.lua

for i, want in ipairs({'string', 'list', 'string'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= want and t ~= 'none' then return {-1, t, KEYS[i]} end
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] and ARGV[3] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
  return 1
end
return 1 + release_lease(KEYS[1], KEYS[3], KEYS[2], ARGV[2])
