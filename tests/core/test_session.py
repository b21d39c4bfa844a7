"""The Restate state API in every loading mode, checked against what Redis holds."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from restate_redis import RedisStateStore, SessionClosedError
from restate_redis.keyspace import EMPTY_GRACE_SECONDS
from restate_redis.serde import MsgPackSerde
from tests.support.keys import read_meta, read_state

MODES: dict[str, Any] = {"eager": True, "lazy": False, "preload": ["a", "missing"]}
packb = MsgPackSerde().serialize


@pytest.fixture(params=list(MODES))
def preload(request: pytest.FixtureRequest) -> Any:
    return MODES[request.param]


async def seed(client: aioredis.Redis, store: RedisStateStore, **values: Any) -> None:
    async with store.object("Svc", "obj") as ctx:
        for k, v in values.items():
            ctx.set(k, v)


async def test_get_set_clear_state_keys(
    store: RedisStateStore, client: aioredis.Redis, preload: Any
) -> None:
    await seed(client, store, a=1, b="two", c=[3])
    state = store.keyspace.object_keys("Svc", "obj").state
    assert await read_state(client, state) == {b"a": packb(1), b"b": packb("two"), b"c": packb([3])}

    async with store.object("Svc", "obj", state_preload=preload) as ctx:
        assert ctx.key() == "obj"
        assert await ctx.get("a", type_hint=int) == 1
        assert await ctx.get("b") == "two"
        assert await ctx.get("missing") is None
        assert await ctx.state_keys() == ["a", "b", "c"]
        ctx.set("a", 10)  # read your writes
        assert await ctx.get("a") == 10
        ctx.clear("b")
        assert await ctx.get("b") is None
        ctx.set("d", {"x": 1})
        assert await ctx.state_keys() == ["a", "c", "d"]  # a cleared key is gone at once
        # nothing reaches Redis before the commit
        assert await client.hget(state, "a") == packb(1)
    assert await read_state(client, state) == {
        b"a": packb(10),
        b"c": packb([3]),
        b"d": packb({"x": 1}),
    }


async def test_exception_discards_every_write(
    store: RedisStateStore, client: aioredis.Redis, preload: Any
) -> None:
    await seed(client, store, a=1)
    state = store.keyspace.object_keys("Svc", "obj").state
    with pytest.raises(RuntimeError, match="boom"):
        async with store.object("Svc", "obj", state_preload=preload) as ctx:
            ctx.set("a", 2)
            ctx.set("b", 3)
            ctx.clear_all()
            raise RuntimeError("boom")
    assert await read_state(client, state) == {b"a": packb(1)}
    # and the lease was released: the next exclusive session opens at once
    async with store.object("Svc", "obj", state_preload=preload) as ctx:
        assert await ctx.get("a") == 1


async def test_clear_all_then_set_in_one_session(
    store: RedisStateStore, client: aioredis.Redis, preload: Any
) -> None:
    await seed(client, store, a=1, b=2, c=3)
    async with store.object("Svc", "obj", state_preload=preload) as ctx:
        ctx.clear_all()
        assert await ctx.state_keys() == []
        assert await ctx.get("a") is None
        ctx.set("b", 20)
        ctx.set("z", 26)
        assert await ctx.state_keys() == ["b", "z"]
    state = store.keyspace.object_keys("Svc", "obj").state
    assert await read_state(client, state) == {b"b": packb(20), b"z": packb(26)}


async def test_clear_all_alone_empties_the_hash(
    store: RedisStateStore, client: aioredis.Redis, preload: Any
) -> None:
    await seed(client, store, a=1, b=2)
    async with store.object("Svc", "obj", state_preload=preload) as ctx:
        ctx.clear_all()
    keys = store.keyspace.object_keys("Svc", "obj")
    # only the bookkeeping is left, for the grace period
    assert await read_state(client, keys.state) == {}
    assert (await read_meta(client, keys.state)).fading
    assert 0 < await client.pttl(keys.state) <= EMPTY_GRACE_SECONDS * 1000
    async with store.object("Svc", "obj", state_preload=preload) as ctx:
        assert await ctx.state_keys() == []


async def test_none_is_a_value_unlike_missing(
    store: RedisStateStore, client: aioredis.Redis, preload: Any
) -> None:
    await seed(client, store, a=None)
    async with store.object("Svc", "obj", state_preload=preload) as ctx:
        assert await ctx.get("a") is None
        assert await ctx.state_keys() == ["a"]
    state = store.keyspace.object_keys("Svc", "obj").state
    assert await client.hget(state, "a") == b"\xc0"


async def test_shared_session_reads_committed_state(store: RedisStateStore, preload: Any) -> None:
    async with store.object("Svc", "obj", shared=True, state_preload=preload) as ctx:
        assert await ctx.state_keys() == []
        assert await ctx.get("a") is None
    await seed(None, store, a=5)  # type: ignore[arg-type]
    async with store.object("Svc", "obj", shared=True, state_preload=preload) as ctx:
        assert await ctx.get("a") == 5
        assert await ctx.state_keys() == ["a"]


async def test_shared_sessions_run_while_an_exclusive_one_holds_the_lease(
    store: RedisStateStore,
) -> None:
    await seed(None, store, a=1)  # type: ignore[arg-type]
    async with store.object("Svc", "obj") as ex:
        ex.set("a", 2)
        async with store.object("Svc", "obj", shared=True) as sh:
            assert await sh.get("a") == 1  # committed state only
    async with store.object("Svc", "obj", shared=True) as sh:
        assert await sh.get("a") == 2


async def test_session_without_writes_sends_no_commit(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    await seed(client, store, a=1)
    state = store.keyspace.object_keys("Svc", "obj").state
    before = (await read_meta(client, state)).version
    async with store.object("Svc", "obj") as ctx:
        assert await ctx.get("a") == 1
    assert (await read_meta(client, state)).version == before == 1


async def test_version_counts_commits(store: RedisStateStore) -> None:
    for i in range(3):
        async with store.object("Svc", "obj") as ctx:
            assert ctx.version == i
            ctx.set("n", i)
    assert ctx.version == 3


async def test_get_all_returns_every_key(store: RedisStateStore, preload: Any) -> None:
    await seed(None, store, a=1, b=2)  # type: ignore[arg-type]
    async with store.object("Svc", "obj", state_preload=preload) as ctx:
        ctx.set("c", 3)
        ctx.clear("a")
        assert await ctx.get_all() == {"b": 2, "c": 3}


async def test_session_is_usable_only_inside_its_block(store: RedisStateStore) -> None:
    session = store.object("Svc", "obj")
    with pytest.raises(SessionClosedError, match="'Svc'/'obj'"):
        await session.get("a")
    async with session as ctx:
        ctx.set("a", 1)
    with pytest.raises(SessionClosedError):
        ctx.set("a", 2)
    with pytest.raises(SessionClosedError):
        async with session:
            pass


async def test_store_is_an_async_context_manager(client: aioredis.Redis) -> None:
    url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
    async with RedisStateStore.from_url(url) as store:
        async with store.object("Svc", "obj") as ctx:
            ctx.set("a", 1)
        async with store.object("Svc", "obj", shared=True) as ctx:
            assert await ctx.get("a") == 1
    assert await client.hget(store.keyspace.object_keys("Svc", "obj").state, "a") == packb(1)


async def test_objects_are_isolated_by_service_and_key(store: RedisStateStore) -> None:
    for service, key in [("A", "x"), ("A", "y"), ("B", "x")]:
        async with store.object(service, key) as ctx:
            ctx.set("who", f"{service}/{key}")
    for service, key in [("A", "x"), ("A", "y"), ("B", "x")]:
        async with store.object(service, key, shared=True) as ctx:
            assert await ctx.get("who") == f"{service}/{key}"


async def test_namespace_prefixes_every_key(client: aioredis.Redis) -> None:
    store = RedisStateStore(client, namespace="tenant-7")
    async with store.object("Svc", "obj") as ctx:
        ctx.set("a", 1)
    keys = sorted(k.decode() for k in await client.keys("*"))
    assert keys and all(k.startswith("tenant-7:{Svc:obj}:") for k in keys), keys
