"""The per-object lease: one exclusive session at a time, prompt hand-off, fencing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from restate_redis import LeaseLostError, LeaseTimeoutError, RedisStateStore
from tests.support.counting import CountingConnection, open_counted_store
from tests.support.servers import Server


async def test_exclusive_sessions_never_overlap(store: RedisStateStore) -> None:
    inside = 0
    overlaps = 0

    async def handler() -> None:
        nonlocal inside, overlaps
        async with store.object("Counter", "hot") as ctx:
            inside += 1
            overlaps += inside > 1
            n = await ctx.get("n", type_hint=int) or 0
            await asyncio.sleep(0)
            ctx.set("n", n + 1)
            inside -= 1

    await asyncio.gather(*(handler() for _ in range(60)))
    assert overlaps == 0
    async with store.object("Counter", "hot", shared=True) as ctx:
        assert await ctx.get("n") == 60


async def test_lease_key_holds_the_token_only_during_the_session(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    lease = store.keyspace.object_keys("Counter", "a").lease
    async with store.object("Counter", "a") as ctx:
        assert await client.get(lease) == ctx._target.token.encode()
        assert 0 < await client.pttl(lease) <= 5000
    await store.backend.settle()  # a session that wrote nothing does not wait for its release
    assert await client.exists(lease) == 0
    async with store.object("Counter", "a"):
        pass
    await store.backend.settle()  # a session that wrote nothing does not wait for its release
    assert await client.exists(lease) == 0


@pytest.fixture
async def counted_store(server: Server) -> AsyncIterator[RedisStateStore]:
    async with open_counted_store(server.url, lease_ttl=30, acquire_timeout=30) as store:
        yield store


async def test_waiter_wakes_on_release_without_polling(counted_store: RedisStateStore) -> None:
    store = counted_store
    holder_in = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with store.object("Counter", "a") as ctx:
            holder_in.set()
            await release.wait()
            ctx.set("n", 1)

    # a waiter of another store (another worker): one of the same store waits in its line
    other = RedisStateStore(store.client, lease_ttl=store.lease_ttl, acquire_timeout=10)
    await other.backend.wire.execute("PING")  # its link connected
    task = asyncio.create_task(holder())
    await holder_in.wait()
    CountingConnection.sent_log.clear()
    waiter = asyncio.create_task(other.object("Counter", "a").__aenter__())
    await asyncio.sleep(0.5)  # the waiter is blocked: it must not be sending anything
    sent_while_blocked = list(CountingConnection.sent_log)
    release.set()
    await task
    session = await asyncio.wait_for(waiter, 5)
    assert await session.get("n") == 1
    await session.__aexit__(None, None, None)
    await other.aclose()
    # one open attempt, one BLPOP; no sleep-poll loop
    assert sent_while_blocked == ["EVALSHA", "BLPOP"]


async def test_acquire_timeout(client: aioredis.Redis) -> None:
    store = RedisStateStore(client, acquire_timeout=0.3, lease_ttl=10)
    async with store.object("Counter", "a") as ctx:
        ctx.set("n", 1)
        with pytest.raises(LeaseTimeoutError, match=r"'Counter'/'a'.*acquire_timeout=0.3s"):
            async with store.object("Counter", "a"):
                pass
    async with store.object("Counter", "a", shared=True) as ctx:
        assert await ctx.get("n") == 1


async def test_lease_is_renewed_while_the_session_runs(client: aioredis.Redis) -> None:
    store = RedisStateStore(client, lease_ttl=2, acquire_timeout=0.05)
    async with store.object("Counter", "a") as ctx:
        ctx.set("n", 1)
        for _ in range(6):  # twice the lease's lifetime
            await asyncio.sleep(0.7)
            with pytest.raises(LeaseTimeoutError):
                async with store.object("Counter", "a"):
                    pass
    async with store.object("Counter", "a", shared=True) as ctx:
        assert await ctx.get("n") == 1


async def test_stalled_holder_loses_the_lease_and_writes_nothing(
    client: aioredis.Redis,
) -> None:
    store = RedisStateStore(client, lease_ttl=0.2, acquire_timeout=5)
    stalled = store.object("Counter", "a")
    await stalled.__aenter__()
    stalled.set("n", "stale")
    stalled.set("other", "stale")
    time.sleep(0.5)  # noqa: ASYNC251 - the event loop is blocked: renewal cannot run, the lease runs out
    async with store.object("Counter", "a") as ctx:
        ctx.set("n", "next holder")
    with pytest.raises(LeaseLostError, match=r"'Counter'/'a'.*nothing was written"):
        await stalled.__aexit__(None, None, None)
    async with store.object("Counter", "a", shared=True) as ctx:
        assert await ctx.get_all() == {"n": "next holder"}


async def test_lease_of_a_crashed_holder_expires(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    lease = store.keyspace.object_keys("Counter", "a").lease
    await client.set(lease, "a-worker-that-died", px=400)
    async with store.object("Counter", "a") as ctx:
        assert await client.get(lease) == ctx._target.token.encode()
        ctx.set("n", 1)
    assert ctx.lease_wait > 0
    async with store.object("Counter", "a", shared=True) as ctx:
        assert await ctx.get("n") == 1


async def test_a_retry_with_the_same_lease_token_re_enters_the_lease(
    client: aioredis.Redis,
) -> None:
    store = RedisStateStore(client, lease_ttl=60, acquire_timeout=0.2)
    died = store.object("Counter", "a", lease_token="attempt-of-inv-1")
    await died.__aenter__()  # a worker that never came back: its lease lives for a minute
    died.set("n", "never committed")
    with pytest.raises(LeaseTimeoutError):
        async with store.object("Counter", "a"):
            pass
    async with store.object("Counter", "a", lease_token="attempt-of-inv-1") as retry:
        assert await retry.get("n") is None
        retry.set("n", 1)
    assert await client.exists(store.keyspace.object_keys("Counter", "a").lease) == 0
    async with store.object("Counter", "a", shared=True) as ctx:
        assert await ctx.get("n") == 1
