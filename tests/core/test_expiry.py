"""Workflow retention and object ttl through Redis key expiry, set in the commit itself."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from restate_redis import ReadOnlySessionError, RedisStateStore, WorkflowCompletedError
from tests.support.keys import read_meta, read_state


async def wait_until_gone(client: aioredis.Redis, *keys: str) -> None:
    deadline = time.monotonic() + 10.0
    while await client.exists(*keys):
        assert time.monotonic() < deadline, f"{keys} did not expire"
        await asyncio.sleep(0.05)


async def test_workflow_run_completes_and_expires_after_retention(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Signup", "wf-1")
    async with store.workflow("Signup", "wf-1", retention=timedelta(milliseconds=800)) as ctx:
        assert ctx.key() == "wf-1"
        ctx.set("email", "a@b.c")
        ctx.set("step", 3)
        # another worker sees it running while the run handler is in progress
        async with store.workflow("Signup", "wf-1", shared=True) as peek:
            assert peek.workflow_status == "running"
            assert await peek.get("email") is None
    # expiry was set by the same script that wrote the state
    assert 0 < await client.pttl(keys.state) <= 800
    assert (await read_meta(client, keys.state)).workflow == "completed"
    async with store.workflow("Signup", "wf-1", shared=True) as ctx:
        assert ctx.workflow_status == "completed"
        assert await ctx.get("email") == "a@b.c"
        assert await ctx.state_keys() == ["email", "step"]
        with pytest.raises(ReadOnlySessionError):
            ctx.set("email", "x")
    with pytest.raises(WorkflowCompletedError, match="'Signup'/'wf-1' already completed"):
        async with store.workflow("Signup", "wf-1"):
            pass
    await wait_until_gone(client, keys.state)
    for preload in (True, False):
        async with store.workflow("Signup", "wf-1", shared=True, state_preload=preload) as ctx:
            assert await ctx.get("email") is None
            assert await ctx.state_keys() == []
            assert ctx.workflow_status is None


async def test_workflow_run_without_writes_still_completes(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    async with store.workflow("Signup", "wf-2", retention=60):
        pass
    state = store.keyspace.object_keys("Signup", "wf-2").state
    assert (await read_meta(client, state)).workflow == "completed"
    assert 0 < await client.pttl(state) <= 60_000


async def test_failed_run_leaves_the_workflow_runnable(store: RedisStateStore) -> None:
    with pytest.raises(RuntimeError):
        async with store.workflow("Signup", "wf-3") as ctx:
            ctx.set("a", 1)
            raise RuntimeError("step failed")
    async with store.workflow("Signup", "wf-3") as ctx:
        assert ctx.workflow_status == "running"
        assert await ctx.get("a") is None
        ctx.set("a", 2)


async def test_default_retention_is_the_store_option(client: aioredis.Redis) -> None:
    store = RedisStateStore(client, workflow_retention=timedelta(hours=2))
    async with store.workflow("Signup", "wf-4") as ctx:
        ctx.set("a", 1)
    pttl = await client.pttl(store.keyspace.object_keys("Signup", "wf-4").state)
    assert 7_000_000 < pttl <= 7_200_000


async def test_objects_keep_state_without_ttl(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    async with store.object("Counter", "a") as ctx:
        ctx.set("n", 1)
    keys = store.keyspace.object_keys("Counter", "a")
    assert await client.pttl(keys.state) == -1


async def test_object_ttl_slides_with_each_commit(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Session", "s1")
    async with store.object("Session", "s1", ttl=timedelta(seconds=30)) as ctx:
        ctx.set("n", 1)
    assert 0 < await client.pttl(keys.state) <= 30_000
    async with store.object("Session", "s1", ttl=120) as ctx:
        ctx.set("n", 2)
    assert 30_000 < await client.pttl(keys.state) <= 120_000
    async with store.object("Session", "s1", ttl=0.3) as ctx:
        ctx.set("n", 3)
    await wait_until_gone(client, keys.state)
    async with store.object("Session", "s1") as ctx:
        assert await ctx.get("n") is None


async def test_stored_size_is_tracked_by_every_commit(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Svc", "o")

    async def check() -> None:
        data = await read_state(client, keys.state)
        expected = sum(len(f) + len(v) for f, v in data.items())
        assert (await read_meta(client, keys.state)).size == expected

    async with store.object("Svc", "o") as ctx:
        ctx.set("a", "x" * 10)
        ctx.set("bb", "")
    await check()
    async with store.object("Svc", "o") as ctx:
        ctx.set("a", "y" * 50)
        ctx.clear("bb")
        ctx.clear("never")
        ctx.set("ccc", [1, 2, 3])
    await check()
    async with store.object("Svc", "o") as ctx:
        ctx.clear_all()
        ctx.set("d", 1)
    await check()
