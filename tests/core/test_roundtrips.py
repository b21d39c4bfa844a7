"""Round trips per session, counted on the wire against a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from restate_redis import RedisStateStore, StateError
from tests.support.counting import CountingConnection, open_counted_store
from tests.support.servers import Server


@pytest.fixture
async def counted(server: Server) -> AsyncIterator[RedisStateStore]:
    async with open_counted_store(server.url) as store:
        async with store.object("Warm", "up") as ctx:  # load the scripts once
            ctx.set("k", 1)
        async with store.object("Warm", "up", state_preload=False) as ctx:
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


async def test_eager_session_without_writes_is_two_round_trips(counted: RedisStateStore) -> None:
    async with counted.object("Svc", "obj") as ctx:
        await ctx.get("k1")
    assert CountingConnection.sent_log == ["EVALSHA", "EVALSHA"]  # open, release


async def test_lazy_exclusive_session_reading_one_key_is_three(counted: RedisStateStore) -> None:
    async with counted.object("Svc", "obj", state_preload=False) as ctx:
        v = await ctx.get("k3")
        assert await ctx.get("k3") == v  # cached after the first read
        ctx.set("k3", "z")
    assert CountingConnection.sent_log == ["EVALSHA", "HGET", "EVALSHA"]


async def test_lazy_state_keys_is_one_round_trip(counted: RedisStateStore) -> None:
    async with counted.object("Svc", "obj", state_preload=False, shared=True) as ctx:
        assert len(await ctx.state_keys()) == 10
        assert len(await ctx.state_keys()) == 10
    # scan.lua: the whole (small) hash's names at once; a shared lazy session does not open
    assert CountingConnection.sent_log == ["EVALSHA"]


async def test_preload_reads_named_keys_up_front(counted: RedisStateStore) -> None:
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
    store = RedisStateStore(client, eager_state_size_limit=2000)
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
