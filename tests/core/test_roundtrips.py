"""Round trips per session, counted on the wire against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from msgpack import packb

from restate_redis import RedisStateStore, StateError
from tests.support.counting import CountingConnection, open_counted_store
from tests.support.keys import read_state
from tests.support.servers import Server


@pytest.fixture
async def counted(server: Server) -> AsyncIterator[RedisStateStore]:
    async with open_counted_store(server.url) as store:
        async with store.object("Warm", "up") as ctx:  # load the scripts once
            ctx.set("k", 1)
        async with store.object("Warm", "up", state_preload=False, shared=True) as ctx:
            await ctx.state_keys()
        async with store.object("Warm", "up"):
            pass
        for i in range(10):
            async with store.object("Svc", "obj") as ctx:
                ctx.set(f"k{i}", "x" * 100)
        CountingConnection.sent_log.clear()
        yield store


async def test_eager_exclusive_session_is_two_round_trips(counted: RedisStateStore) -> None:
    async with counted.object("Svc", "obj") as ctx:
        n = await ctx.get("k1")
        assert await ctx.get("k2") == n
        ctx.set("k1", "y")
        await ctx.state_keys()
    assert CountingConnection.sent_log == ["EVALSHA", "EVALSHA"]


async def test_eager_session_without_writes_waits_for_one_round_trip(
    counted: RedisStateStore,
) -> None:
    async with counted.object("Svc", "obj") as ctx:
        await ctx.get("k1")
    # open, release: the release is on its way, its reply not awaited by the session
    assert CountingConnection.sent_log == ["EVALSHA", "EVALSHA"]
    assert counted.backend._releases
    await counted.backend.settle()
    assert await counted.client.exists(counted.keyspace.object_keys("Svc", "obj").lease) == 0


async def test_lazy_exclusive_read_of_one_key_waits_for_one_round_trip(
    counted: RedisStateStore,
) -> None:
    assert counted.snapshots is not None
    counted.snapshots.clear()
    async with counted.object("Svc", "obj", state_preload=False) as ctx:
        assert CountingConnection.sent_log == []  # a lazy session opens on its first read
        v = await ctx.get("k3")
        assert v == "x" * 100
        assert CountingConnection.sent_log == ["EVALSHA"]  # the read rode on the open
        assert await ctx.get("k3") == v  # kept after the first read
        assert ctx.version == 10
    assert CountingConnection.sent_log == ["EVALSHA", "EVALSHA"]  # and the release,
    assert counted.backend._releases  # whose reply the session did not wait for
    await counted.backend.settle()


async def test_lazy_session_that_reads_and_writes_is_two(counted: RedisStateStore) -> None:
    assert counted.snapshots is not None
    counted.snapshots.clear()
    async with counted.object("Svc", "obj", state_preload=False) as ctx:
        ctx.set("k3", "z")
        assert await ctx.get("k3") == "z"  # its own write: nothing to read
        assert await ctx.get("k4") == "x" * 100
    assert CountingConnection.sent_log == ["EVALSHA", "EVALSHA"]  # open and read, commit


async def test_a_blind_write_is_one_round_trip(counted: RedisStateStore) -> None:
    keys = counted.keyspace.object_keys("Svc", "fresh")
    async with counted.object("Svc", "fresh", state_preload=False) as ctx:
        ctx.set("a", 1)
        ctx.clear("b")
    assert CountingConnection.sent_log == ["EVALSHA"]  # take, apply, release: one script
    assert ctx.version == 1
    assert await read_state(counted.client, keys.state) == {b"a": b"\x01"}
    assert await counted.client.exists(keys.lease, keys.wake, keys.wait) == 0
    CountingConnection.sent_log.clear()
    async with counted.object("Svc", "fresh", state_preload=False) as ctx:
        pass
    assert CountingConnection.sent_log == []  # nothing read, nothing written: no round trip


async def test_a_blind_write_waits_for_the_lease_like_an_open(counted: RedisStateStore) -> None:
    other = RedisStateStore(counted.client)  # another worker holds the object
    holder = other.object("Svc", "obj")
    await holder.__aenter__()
    holder.set("k1", "held")

    async def blind() -> int:
        async with counted.object("Svc", "obj", state_preload=False) as ctx:
            ctx.set("k2", "blind")
        return ctx.version

    task = asyncio.create_task(blind())
    deadline = asyncio.get_running_loop().time() + 5
    while "BLPOP" not in CountingConnection.sent_log:  # refused BUSY, now waiting
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert not task.done()
    await holder.__aexit__(None, None, None)
    await other.aclose()
    assert await asyncio.wait_for(task, 10) == 12  # after the holder's commit (11)
    state = counted.keyspace.object_keys("Svc", "obj").state
    assert await counted.client.hmget(state, ["k1", "k2"]) == [packb("held"), packb("blind")]


async def test_lease_on_enter_opens_a_lazy_session_on_entry(counted: RedisStateStore) -> None:
    assert counted.snapshots is not None
    counted.snapshots.clear()
    async with counted.object("Svc", "obj", state_preload=False, lease_on_enter=True) as ctx:
        assert CountingConnection.sent_log == ["EVALSHA"]
        assert ctx.version == 10
        assert await ctx.get("k3") == "x" * 100
    assert CountingConnection.sent_log == ["EVALSHA", "HGET", "EVALSHA"]


async def test_an_unopened_lazy_session_says_how_to_read_its_version(
    counted: RedisStateStore,
) -> None:
    async with counted.object("Svc", "obj", state_preload=False) as ctx:
        with pytest.raises(StateError, match="lease_on_enter=True"):
            _ = ctx.version


async def test_lazy_state_keys_is_one_round_trip(counted: RedisStateStore) -> None:
    async with counted.object("Svc", "obj", state_preload=False, shared=True) as ctx:
        assert len(await ctx.state_keys()) == 10
        assert len(await ctx.state_keys()) == 10
    # scan.lua: the whole (small) hash's names at once; a shared lazy session does not open
    assert CountingConnection.sent_log == ["EVALSHA"]


async def test_preload_reads_named_keys_up_front(counted: RedisStateStore) -> None:
    assert counted.snapshots is not None
    counted.snapshots.clear()
    async with counted.object("Svc", "obj", state_preload=["k1", "nope"]) as ctx:
        assert await ctx.get("k1") == "x" * 100
        assert await ctx.get("nope") is None
        assert await ctx.get("k2") == "x" * 100  # lazy for the rest
        ctx.set("k1", 1)
    assert CountingConnection.sent_log == ["EVALSHA", "HGET", "EVALSHA"]


async def test_shared_eager_session_is_one_round_trip(counted: RedisStateStore) -> None:
    async with counted.object("Svc", "obj", shared=True) as ctx:
        assert len(await ctx.state_keys()) == 10
        await ctx.get("k5")
    assert CountingConnection.sent_log == ["EVALSHA"]


async def test_eager_state_over_the_size_limit_falls_back_to_lazy(server: Server) -> None:
    pool = aioredis.ConnectionPool.from_url(server.url, connection_class=CountingConnection)
    client = aioredis.Redis(connection_pool=pool)
    await client.flushall()
    store = RedisStateStore(client, eager_state_size_limit=2000, snapshot_cache_bytes=0)
    async with store.object("Svc", "big") as ctx:
        for i in range(30):
            ctx.set(f"k{i}", b"x" * 100)
    async with store.object("Svc", "small") as ctx:
        ctx.set("k", b"x" * 100)
    CountingConnection.sent_log.clear()
    async with store.object("Svc", "big", shared=True) as ctx:
        assert ctx.mode == "lazy"
        assert await ctx.get("k7") == b"x" * 100
    async with store.object("Svc", "small", shared=True) as ctx:
        assert ctx.mode == "eager"
        assert await ctx.get("k") == b"x" * 100
    assert CountingConnection.sent_log == ["EVALSHA", "HGET", "EVALSHA"]
    await client.aclose()


async def test_lazy_get_after_state_keys_skips_absent_keys(counted: RedisStateStore) -> None:
    async with counted.object("Svc", "obj", state_preload=False, shared=True) as ctx:
        await ctx.state_keys()
        assert await ctx.get("absent") is None
        assert await ctx.get("k1") == "x" * 100
    assert CountingConnection.sent_log == ["EVALSHA", "HGET"]


async def test_a_shared_lazy_read_of_one_key_is_one_hget(counted: RedisStateStore) -> None:
    async with counted.object("Svc", "obj", state_preload=False, shared=True) as ctx:
        assert await ctx.get("k4") == "x" * 100
        with pytest.raises(StateError, match="version of 'Svc'/'obj' was not read"):
            _ = ctx.version
    assert CountingConnection.sent_log == ["HGET"]
    # a workflow's shared lazy session still opens: its status is read there
    async with counted.workflow("Flow", "w", state_preload=False, shared=True) as ctx:
        assert ctx.workflow_status is None and ctx.version == 0
        assert await ctx.get("k") is None
    assert CountingConnection.sent_log == ["HGET", "EVALSHA", "HGET"]


@pytest.mark.parametrize("history", [False, True])
async def test_history_adds_no_round_trip(server: Server, history: bool) -> None:
    """With history on the entry is written by the commit script itself; off, the commit
    names no history key and none is written."""
    async with open_counted_store(server.url, history=history) as store:
        async with store.object("Svc", "h") as ctx:  # loads the scripts
            ctx.set("k", 0)
        CountingConnection.sent_log.clear()
        async with store.object("Svc", "h") as ctx:
            ctx.set("k", await ctx.get("k") + 1)
        async with store.object("Svc", "h", state_preload=False) as ctx:  # a blind write
            ctx.set("k", 5)
        assert CountingConnection.sent_log == ["EVALSHA", "EVALSHA", "EVALSHA"]
        stream = store.keyspace.object_keys("Svc", "h").history
        assert await store.client.exists(stream) == int(history)
        if history:
            assert await store.client.xlen(stream) == 3
