-- renew.lua: extend the exclusive lease while its holder still owns it.
--
-- KEYS[1] lease   string: the holder's token
-- ARGV[1] token   the renewing session's token
-- ARGV[2] ttl ms  the new time to live
--
-- Reply: 1 renewed; 0 the lease is no longer held by token (or the key holds another type)

if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
