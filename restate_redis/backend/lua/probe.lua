-- probe.lua: what the server offers that some calls need; reads nothing, writes nothing.
-- Run once per store, on the first exclusive open (a cluster routes it to the slot of KEYS[1]).
--
-- KEYS[1] a key of the object being opened (its state hash)
--
-- Reply: {field expiry: 1 or 0, server name and version, the server's error or ""}
--#include expiry.lua

local refused = field_expiry_refused(KEYS[1])
if refused and not string.find(refused, 'WRONGTYPE', 1, true) then
  return {0, server_name(), refused}
end
return {1, server_name(), ''}
