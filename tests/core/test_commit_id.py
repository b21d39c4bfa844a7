"""commit_id: a repeated session (a retried request) sees the state from before its first
commit, and its commit is not applied twice."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from restate_redis import RedisStateStore
from tests.support.keys import read_meta


async def add(store: RedisStateStore, delta: int, commit_id: str, preload: object = True) -> int:
    async with store.object("Counter", "a", commit_id=commit_id, state_preload=preload) as ctx:  # type: ignore[arg-type]
        n = (await ctx.get("n", type_hint=int) or 0) + delta
        ctx.set("n", n)
        ctx.set(f"seen-{commit_id}", True)
        return n


@pytest.mark.parametrize("preload", [True, False, ["n"]])
async def test_retry_of_an_applied_commit_is_recognised(
    store: RedisStateStore, client: aioredis.Redis, preload: object
) -> None:
    assert await add(store, 5, "inv-1", preload) == 5
    assert await add(store, 3, "inv-2", preload) == 8
    keys = store.keyspace.object_keys("Counter", "a")
    version = (await read_meta(client, keys.state)).version
    # inv-2 is retried (its reply was lost): same result, nothing applied twice
    assert await add(store, 3, "inv-2", preload) == 8
    assert await add(store, 3, "inv-2", preload) == 8
    assert (await read_meta(client, keys.state)).version == version
    assert await client.exists(keys.lease) == 0  # the replay released its lease
    async with store.object("Counter", "a", shared=True) as ctx:
        assert await ctx.get_all() == {"n": 8, "seen-inv-1": True, "seen-inv-2": True}
    # an older id is no longer the last commit: it runs as new work
    assert await add(store, 1, "inv-3") == 9


async def test_replay_sees_state_before_a_clear_all(store: RedisStateStore) -> None:
    async with store.object("Cart", "c", commit_id="fill") as ctx:
        ctx.set("apple", 2)
        ctx.set("pear", 1)
    for attempt in range(2):
        async with store.object("Cart", "c", commit_id="checkout") as ctx:
            assert await ctx.get_all() == {"apple": 2, "pear": 1}
            ctx.clear_all()
            ctx.set("order", "o-1")
        assert ctx.replayed == (attempt == 1)
    async with store.object("Cart", "c", shared=True) as ctx:
        assert await ctx.get_all() == {"order": "o-1"}


async def test_workflow_run_retry_after_completion_is_a_replay(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    for attempt in range(2):
        async with store.workflow("Signup", "wf", commit_id="inv-run", retention=60) as ctx:
            assert await ctx.get("step") is None
            ctx.set("step", "done")
        assert ctx.replayed == (attempt == 1)
    meta = await read_meta(client, store.keyspace.object_keys("Signup", "wf").state)
    assert meta.version == 1
    assert meta.workflow == "completed"
