"""The snapshot cache: an open that names a snapshot still current reads no state, and every
way the state can change behind a worker's back makes the next open read it again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from restate_redis import InvalidOptionError, RedisStateStore
from restate_redis.session.cache import SnapshotCache
from restate_redis.tools.bench.meter import METER
from tests.support.clirun import run_cli
from tests.support.counting import CountingConnection, open_counted_store
from tests.support.servers import Server

KIB = b"v" * 1024


@pytest.fixture
async def worker(server: Server, client: aioredis.Redis) -> AsyncIterator[RedisStateStore]:
    """A store as one worker holds it (the database emptied by the client fixture)."""
    async with RedisStateStore.from_url(server.url) as store:
        yield store


@pytest.fixture
async def other(server: Server, worker: RedisStateStore) -> AsyncIterator[RedisStateStore]:
    """Another worker's store: another client, another cache."""
    async with RedisStateStore.from_url(server.url) as store:
        yield store


async def read(store: RedisStateStore, key: str = "alice") -> tuple[bool, dict[str, object]]:
    """(the open found the snapshot current, the state) of an exclusive eager session."""
    async with store.object("Cart", key) as ctx:
        return ctx.cached, await ctx.get_all()


async def test_an_unchanged_large_object_opens_without_its_state(server: Server) -> None:
    async with open_counted_store(server.url) as store:
        async with store.object("Big", "one") as ctx:
            for i in range(1000):
                ctx.set(f"k{i}", KIB)
        METER.reset()
        CountingConnection.sent_log.clear()
        async with store.object("Big", "one") as ctx:
            assert ctx.cached and ctx.mode == "eager"
            assert await ctx.get("k999") == KIB
            assert len(await ctx.state_keys()) == 1000
            ctx.set("k0", b"changed")
        assert CountingConnection.sent_log == ["EVALSHA", "EVALSHA"]  # open, commit
        assert METER.bytes_in < 1024  # no state came back
        # the commit left its own result in the cache: the next open is cached again
        async with store.object("Big", "one", shared=True) as ctx:
            assert ctx.cached
            assert await ctx.get("k0") == b"changed" and await ctx.get("k1") == KIB


async def test_a_commit_keeps_what_it_wrote(worker: RedisStateStore) -> None:
    async with worker.object("Cart", "alice") as ctx:
        ctx.set("a", 1)
        ctx.set("b", 2)
    async with worker.object("Cart", "alice") as ctx:
        ctx.clear("a")
        ctx.set("c", 3)
    assert await read(worker) == (True, {"b": 2, "c": 3})
    async with worker.object("Cart", "alice") as ctx:
        ctx.clear_all()
        ctx.set("d", 4)
    assert await read(worker) == (True, {"d": 4})
    async with worker.object("Cart", "alice") as ctx:
        ctx.purge()
    assert await read(worker) == (False, {})


async def test_a_change_by_another_worker_is_seen(
    worker: RedisStateStore, other: RedisStateStore
) -> None:
    async with worker.object("Cart", "alice") as ctx:
        ctx.set("n", 1)
    assert await read(worker) == (True, {"n": 1})
    async with other.object("Cart", "alice") as ctx:
        ctx.set("n", (await ctx.get("n")) + 1)
    assert await read(worker) == (False, {"n": 2})
    assert await read(worker) == (True, {"n": 2})


async def test_a_change_by_the_cli_is_seen(server: Server, worker: RedisStateStore) -> None:
    async with worker.object("Cart", "alice") as ctx:
        ctx.set("n", 1)
    assert await read(worker) == (True, {"n": 1})
    done = await asyncio.to_thread(
        run_cli, "kv", "set", "Cart", "alice", "n", "5", "--url", server.url
    )
    assert done.returncode == 0, done.stderr
    assert await read(worker) == (False, {"n": 5})


async def test_an_expired_and_recreated_object_is_seen(
    worker: RedisStateStore, other: RedisStateStore, client: aioredis.Redis
) -> None:
    async with worker.object("Cart", "alice", ttl=0.3) as ctx:
        ctx.set("n", 1)
    assert await read(worker) == (True, {"n": 1})
    state = worker.keyspace.object_keys("Cart", "alice").state
    deadline = asyncio.get_running_loop().time() + 10
    while await client.exists(state):
        assert asyncio.get_running_loop().time() < deadline, "the object did not expire"
        await asyncio.sleep(0.05)
    async with other.object("Cart", "alice") as ctx:  # recreated: version 1 again
        ctx.set("n", 2)
    assert ctx.version == 1
    assert await read(worker) == (False, {"n": 2})


async def test_a_failover_that_lost_the_last_commit_is_seen(
    worker: RedisStateStore, other: RedisStateStore, client: aioredis.Redis
) -> None:
    """A replica promoted before it had the last commit, then another commit there: the same
    version number with other content. Simulated by restoring the keys as they were before."""
    keys = worker.keyspace.object_keys("Cart", "alice")
    async with worker.object("Cart", "alice") as ctx:
        ctx.set("n", 1)
    dumped = {k: await client.dump(k) for k in (keys.state,)}
    async with worker.object("Cart", "alice") as ctx:
        ctx.set("n", 2)  # version 2, cached by this worker
    assert await read(worker) == (True, {"n": 2})
    for key, value in dumped.items():  # the failover loses version 2
        assert value is not None
        await client.restore(key, 0, value, replace=True)
    await client.delete(keys.commits)
    async with other.object("Cart", "alice") as ctx:
        ctx.set("n", 3)  # another version 2
    assert ctx.version == 2
    assert await read(worker) == (False, {"n": 3})


async def test_keys_another_tool_added_or_removed_are_seen(
    worker: RedisStateStore, client: aioredis.Redis
) -> None:
    state = worker.keyspace.object_keys("Cart", "alice").state
    async with worker.object("Cart", "alice") as ctx:
        ctx.set("n", 1)
    await client.hset(state, "added", b"\x02")
    assert await read(worker) == (False, {"n": 1, "added": 2})
    await client.hdel(state, "n")
    assert await read(worker) == (False, {"added": 2})


async def test_shared_sessions_validate_the_same_way(
    server: Server, other: RedisStateStore
) -> None:
    async with open_counted_store(server.url) as store:
        async with store.object("Cart", "alice") as ctx:
            ctx.set("n", 1)
        CountingConnection.sent_log.clear()
        async with store.object("Cart", "alice", shared=True) as ctx:
            assert ctx.cached and await ctx.get("n") == 1
        assert CountingConnection.sent_log == ["EVALSHA"]
        async with other.object("Cart", "alice") as ctx:
            ctx.set("n", 2)
        async with store.object("Cart", "alice", shared=True) as ctx:
            assert not ctx.cached and await ctx.get("n") == 2


async def test_the_cache_is_bounded_and_can_be_turned_off(server: Server) -> None:
    async with RedisStateStore.from_url(server.url, snapshot_cache_bytes=10_000) as store:
        assert store.snapshots is not None
        for i in range(20):
            async with store.object("Cart", f"u{i}") as ctx:
                ctx.set("blob", b"x" * 1000)
        assert store.snapshots.size <= 10_000
        assert 5 <= len(store.snapshots) < 20  # the least recently used went out
        assert (await read(store, "u19"))[0] and not (await read(store, "u0"))[0]
    async with RedisStateStore.from_url(server.url, snapshot_cache_bytes=0) as store:
        assert store.snapshots is None
        assert await read(store, "u19") == (False, {"blob": b"x" * 1000})
    with pytest.raises(InvalidOptionError, match="snapshot_cache_bytes"):
        RedisStateStore.from_url(server.url, snapshot_cache_bytes=-1)


def test_a_snapshot_larger_than_the_cache_is_not_kept() -> None:
    cache = SnapshotCache(100)
    cache.put("a", 1, "c1", {"k": b"x" * 200})
    assert cache.get("a") is None and cache.size == 0
    cache.put("a", 1, "c1", {"k": b"x" * 40})
    cache.put("b", 1, "c2", {"k": b"x" * 40})
    assert cache.get("a") is not None  # now the most recently used
    cache.put("c", 1, "c3", {"k": b"x" * 40})
    assert cache.get("b") is None and cache.get("a") is not None and cache.size <= 100
