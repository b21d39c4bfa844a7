"""A Dapr-style state layout, written for the benchmark's comparison.

Like Dapr's Redis state store (components-contrib ``state/redis``): one Redis hash per state
key with fields ``data`` and ``version``; a read is one ``HGETALL`` of that hash; a write is
one compare-and-set Lua script call that checks the version read before (the ETag), writes
the data and increments the version. One call per state key, awaited one after another as a
handler awaits each state operation. There is no lease: concurrent writers are turned away
by the version check instead of being serialised.
"""

from __future__ import annotations

from typing import Any

# KEYS[1] the state key's hash; ARGV[1] expected version ("" for a first write), ARGV[2] data.
# Reply: the new version, or an error when the version changed since it was read.
CAS_SCRIPT = """
local v = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] ~= '' and v ~= ARGV[1] then
  return redis.error_reply('ETAG mismatch: ' .. KEYS[1])
end
redis.call('HSET', KEYS[1], 'data', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'version', 1)
"""


class DaprStyleState:
    """One object's state keys in the Dapr-style layout on a ``redis.asyncio`` client."""

    def __init__(self, client: Any, app: str, actor_type: str, actor_id: str) -> None:
        self.client = client
        self.prefix = f"{app}||{actor_type}||{actor_id}||"
        self.cas = client.register_script(CAS_SCRIPT)

    async def get(self, name: str) -> tuple[bytes | None, str]:
        """The value of ``name`` and its version (the ETag), one HGETALL."""
        fields = await self.client.hgetall(self.prefix + name)
        data = fields.get(b"data")
        version = fields.get(b"version", b"")
        return data, version.decode()

    async def set(self, name: str, value: bytes, etag: str) -> int:
        """Write ``value`` if the version is still ``etag``; one script call."""
        return int(await self.cas(keys=[self.prefix + name], args=[etag, value]))
