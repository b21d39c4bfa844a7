"""Memory per object: what the server holds for objects of one small state key.

Three figures from ``INFO memory`` over ``n`` objects (summed over every master of a cluster),
each what removing their keys frees of the server's data memory, divided by ``n`` (the key
tables grow in steps as keys are added but do not shrink at once, so this counts the keys
alone):

- **plain hash**: ``n`` plain Redis hashes holding the same state keys and values under the
  same key names as the objects' state hashes: the floor of any layout keeping that state in
  Redis.
- **after commit**: ``n`` objects, each written by one eager exclusive session with a commit id
  (prior values recorded for a replay), as the Restate integration writes them: everything the
  server holds right after the commit, including the keys that expire on their own.
- **idle**: the same objects once those keys are gone. They are found, not named: every key of
  the objects is listed by SCAN and grouped by its kind (the last part of its name), and a kind
  whose keys carry an expiry is transient. Their expiry is simulated by UNLINK rather than
  waited for, so the row takes seconds, not a minute.

Then the same for objects whose one state key holds a 1 KiB value (``n / 10`` objects) and a
100 KiB one (``n / 100``, at least 10), each written twice, a second session rewriting the
value: what an object costs in the steady state of a handler that rewrites its state, the
prior value recorded for a replay included (the capacity model's inputs).

Data memory is ``used_memory`` less the clients' buffers (``mem_clients_normal``), which come
and go with the bench's connections and are not the objects'. Per kind, the rows also give the
keys per object and the bytes one key takes by ``MEMORY USAGE`` (a sample of keys).
"""

from __future__ import annotations

import asyncio
import statistics
import uuid
from typing import Any

from ...backend.inventory import masters, scan_page
from ...keyspace import reserved
from ...store import RedisStateStore

SERVICE = "Counter"  # the objects' service (in the bench's namespace), keys "user-<n>"
FIELD, VALUE = "count", 42  # one small state key
SAMPLE = 50  # keys per kind whose expiry and MEMORY USAGE are read
SIZED = {"1k": (1024, 10), "100k": (100 * 1024, 100)}  # value bytes, objects = n / this
BATCH = 1000


async def data_memory(client: Any) -> int:
    """``used_memory`` less the client buffers, summed over a cluster's masters."""
    total = 0
    for node in await masters(client):
        info = await (
            client.info("memory") if node is None else client.info("memory", target_nodes=node)
        )
        clients = int(info.get("mem_clients_normal", 0)) + int(info.get("mem_clients_slaves", 0))
        total += int(info["used_memory"]) - clients
    return total


async def object_keys_by_kind(store: RedisStateStore) -> dict[str, list[bytes]]:
    """Every key of the memory row's objects, by kind (``state``, ``meta``, ...)."""
    pattern = store.keyspace.object_pattern(SERVICE, suffix="*")
    found: dict[str, list[bytes]] = {}
    cursor = 0
    while True:
        cursor, keys = await scan_page(store.client, cursor, pattern, count=BATCH)
        for key in keys:
            parsed = store.keyspace.parse(key)
            if parsed is not None and parsed[0] == SERVICE:
                found.setdefault(parsed[2], []).append(key)
        if cursor == 0:
            break
    return {kind: sorted(set(keys)) for kind, keys in sorted(found.items())}


async def _unlink(client: Any, keys: list[bytes] | list[str]) -> None:
    for i in range(0, len(keys), BATCH):
        await client.unlink(*keys[i : i + BATCH])


async def _lanes(n: int, concurrency: int, op: Any) -> None:
    async def lane(j: int) -> None:
        for i in range(j, n, concurrency):
            await op(i)

    await asyncio.gather(*(lane(j) for j in range(min(concurrency, n))))


async def measure_memory(store: RedisStateStore, objects: int, concurrency: int) -> dict[str, Any]:
    """The memory row over ``objects`` objects (see the module's docstring); leaves no keys of
    its own behind."""
    client = store.client
    names = [f"user-{i}" for i in range(objects)]
    state_keys = [store.keyspace.object_keys(SERVICE, name).state for name in names]
    run = uuid.uuid4().hex[:8]

    async def commit(i: int) -> None:
        # as the Restate integration opens a handler's session: eager, with the invocation's
        # id as the commit id, so that prior values are recorded for a replay
        async with store.object(SERVICE, names[i], commit_id=f"mem-{run}-{i}") as ctx:
            ctx.set(FIELD, VALUE)

    # The plain hash holds the state keys a state hash holds (not its reserved bookkeeping
    # fields): read from one committed object.
    await commit(0)
    stored: Any = {
        f: v for f, v in (await client.hgetall(state_keys[0])).items() if not reserved(f)
    }
    await _unlink(client, [k for keys in (await object_keys_by_kind(store)).values() for k in keys])

    # Each figure is what removing the keys frees: the server's key tables grow in steps as
    # keys are added, but do not shrink at once when they go, so this counts the keys alone.
    for i in range(0, objects, BATCH):
        pipe = client.pipeline(transaction=False)
        for key in state_keys[i : i + BATCH]:
            pipe.hset(key, mapping=stored)
        await pipe.execute()
    with_plain = await data_memory(client)
    await _unlink(client, state_keys)
    plain = (with_plain - await data_memory(client)) / objects

    await _lanes(objects, concurrency, commit)
    with_all = await data_memory(client)
    kinds = await object_keys_by_kind(store)
    usage = {kind: await _usage(client, keys[:SAMPLE]) for kind, keys in kinds.items()}
    transient = [kind for kind, keys in kinds.items() if await _expiring(client, keys[:SAMPLE])]
    await _unlink(client, [key for kind in transient for key in kinds[kind]])
    with_idle = await data_memory(client)
    idle_kinds = await object_keys_by_kind(store)
    await _unlink(client, [k for keys in idle_kinds.values() for k in keys])
    empty = await data_memory(client)
    after, idle = (with_all - empty) / objects, (with_idle - empty) / objects
    sized = {
        name: await _sized(store, max(10, objects // share), size, concurrency, run)
        for name, (size, share) in SIZED.items()
    }
    return {
        "objects": objects,
        "state": {FIELD: VALUE},
        "description": (
            f"INFO memory used_memory (less client buffers) freed per object by removing the "
            f"keys, over {objects:,} "
            f"objects of one state key: a plain hash with the same field and value under the "
            f"same key name; this store's objects right after an eager session with a commit "
            f"id (prior values recorded) committed; and idle, once the keys that expire on "
            f"their own ({', '.join(transient) or 'none'}) are gone, their expiry simulated by "
            f"UNLINK"
        ),
        "plain_hash_bytes": round(plain, 1),
        "after_commit_bytes": round(after, 1),
        "idle_bytes": round(idle, 1),
        "after_commit_ratio": round(after / plain, 3),
        "idle_ratio": round(idle / plain, 3),
        "transient_kinds": transient,
        # per kind: keys per object, right after the commit and idle
        "keys_per_object": {kind: round(len(keys) / objects, 3) for kind, keys in kinds.items()},
        "idle_keys_per_object": {
            kind: round(len(keys) / objects, 3) for kind, keys in idle_kinds.items()
        },
        # per kind: the median MEMORY USAGE of one key (a sample), bytes
        "bytes_per_key": usage,
        # objects of one larger value, written twice (the prior value recorded)
        "sized": sized,
    }


async def _sized(
    store: RedisStateStore, objects: int, size: int, concurrency: int, run: str
) -> dict[str, Any]:
    """Objects of one state key of ``size`` bytes, written by two sessions with commit ids."""
    client = store.client
    names = [f"s{size}-{i}" for i in range(objects)]

    def writer(round_: int) -> Any:
        value = bytes([65 + round_]) * size  # bytes are stored as they are (msgpack bin)

        async def commit(i: int) -> None:
            commit_id = f"mem-{run}-{size}-{round_}-{i}"
            async with store.object(SERVICE, names[i], commit_id=commit_id) as ctx:
                ctx.set(FIELD, value)

        return commit

    await _lanes(objects, concurrency, writer(0))
    await _lanes(objects, concurrency, writer(1))
    with_all = await data_memory(client)  # what removing the keys frees (measure_memory)
    kinds = await object_keys_by_kind(store)
    usage = {kind: await _usage(client, keys[:SAMPLE]) for kind, keys in kinds.items()}
    transient = [kind for kind, keys in kinds.items() if await _expiring(client, keys[:SAMPLE])]
    await _unlink(client, [key for kind in transient for key in kinds[kind]])
    with_idle = await data_memory(client)
    await _unlink(client, [k for keys in kinds.values() for k in keys])
    empty = await data_memory(client)
    after, idle = (with_all - empty) / objects, (with_idle - empty) / objects
    return {
        "objects": objects,
        "value_bytes": size,
        "after_commit_bytes": round(after, 1),
        "idle_bytes": round(idle, 1),
        "bytes_per_key": usage,
    }


async def _usage(client: Any, keys: list[bytes]) -> float:
    sizes = [size for key in keys if (size := await client.memory_usage(key, samples=0))]
    return float(statistics.median(sizes)) if sizes else 0.0


async def _expiring(client: Any, keys: list[bytes]) -> bool:
    """Whether these keys expire on their own (every one of them has an expiry)."""
    ttls = [await client.pttl(key) for key in keys]
    return bool(ttls) and all(ttl >= 0 for ttl in ttls)
