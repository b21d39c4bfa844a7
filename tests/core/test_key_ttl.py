"""A state key's own expiry (``set(..., ttl=...)``, hash-field expiry) on Valkey 9, and the
clear refusal on Redis 7.0, which has no hash-field expiry.

Expiries are short and observed by polling what Redis holds, up to a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from restate_redis import (
    InvalidOptionError,
    RedisStateStore,
    ServerFeatureError,
    UsageError,
)
from restate_redis.keyspace import EMPTY_GRACE_SECONDS, ObjectKeys
from restate_redis.serde import MsgPackSerde
from tests.support.counting import CountingConnection, open_counted_store
from tests.support.keys import read_meta, read_state
from tests.support.servers import Server

packb = MsgPackSerde().serialize
valkey = pytest.mark.parametrize("server", ["valkey"], indirect=True)
redis70 = pytest.mark.parametrize("server", ["redis"], indirect=True)


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {within:g}s waiting for {what}"
        await asyncio.sleep(0.02)


def gone(client: aioredis.Redis, keys: ObjectKeys, name: str) -> Callable[[], Awaitable[bool]]:
    """True once Redis no longer has state key ``name`` (expired)."""

    async def check() -> bool:
        return not await client.hexists(keys.state, name)

    return check


async def real_size(client: aioredis.Redis, keys: ObjectKeys) -> int:
    """What meta b must hold: the bytes of every live field name and value."""
    return sum(len(k) + len(v) for k, v in (await read_state(client, keys.state)).items())


async def stored_size(client: aioredis.Redis, keys: ObjectKeys) -> int | None:
    return (await read_meta(client, keys.state)).size


async def pttls(client: aioredis.Redis, keys: ObjectKeys, *names: str) -> list[int]:
    return [
        int(x)
        for x in await client.execute_command("HPTTL", keys.state, "FIELDS", len(names), *names)
    ]


async def expire_times(client: aioredis.Redis, keys: ObjectKeys, *names: str) -> list[int]:
    reply = await client.execute_command("HPEXPIRETIME", keys.state, "FIELDS", len(names), *names)
    return [int(x) for x in reply]


async def ttl_members(client: aioredis.Redis, keys: ObjectKeys) -> list[bytes]:
    return list(await client.zrange(keys.ttls, 0, -1))


# -- Valkey 9: hash-field expiry ------------------------------------------------------------------


@valkey
async def test_a_key_expires_on_its_own_and_no_read_returns_it(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Cart", "alice")
    async with store.object("Cart", "alice") as ctx:
        ctx.set("items", ["tea"])
        ctx.set("token", "abc", ttl=0.4)
        ctx.set("coupon", "SAVE", ttl=timedelta(hours=1))
    token_ms, coupon_ms = await pttls(client, keys, "token", "coupon")
    assert 0 < token_ms <= 400
    assert 3_590_000 < coupon_ms <= 3_600_000
    assert await pttls(client, keys, "items") == [-1]  # no expiry of its own
    assert await stored_size(client, keys) == await real_size(client, keys)
    token_bytes = len("token") + len(packb("abc"))
    assert set(await ttl_members(client, keys)) == {
        f"{token_bytes}:token".encode(),
        f"{len('coupon') + len(packb('SAVE'))}:coupon".encode(),
    }

    await until("the token to expire", gone(client, keys, "token"))
    # no commit marked the expiry; every way of reading leaves the key out
    for preload in (True, False, ["token", "items"]):
        async with store.object("Cart", "alice", shared=True, state_preload=preload) as ctx:
            assert await ctx.get("token") is None
            assert await ctx.state_keys() == ["coupon", "items"]
            assert await ctx.get_all() == {"coupon": "SAVE", "items": ["tea"]}
    # the open took the expired key's bytes out of the stored size, and its member out of ttls
    assert await stored_size(client, keys) == await real_size(client, keys)
    assert await ttl_members(client, keys) == [
        f"{len('coupon') + len(packb('SAVE'))}:coupon".encode()
    ]


@valkey
async def test_expiry_survives_commits_that_do_not_touch_the_key(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Cart", "bob")
    async with store.object("Cart", "bob") as ctx:
        ctx.set("token", "abc", ttl=60)
        ctx.set("n", 0)
    [expires_at] = await expire_times(client, keys, "token")
    for i in range(1, 4):
        async with store.object("Cart", "bob") as ctx:
            ctx.set("n", i)
            ctx.set(f"other-{i}", i)
            ctx.clear(f"other-{i - 1}")
    assert await expire_times(client, keys, "token") == [expires_at]  # the same instant
    assert len(await ttl_members(client, keys)) == 1
    assert await stored_size(client, keys) == await real_size(client, keys)


@valkey
async def test_a_plain_set_ends_the_expiry_and_a_clear_or_clear_all_its_bookkeeping(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Cart", "carol")
    async with store.object("Cart", "carol") as ctx:
        ctx.set("a", 1, ttl=60)
        ctx.set("b", 2, ttl=60)
        ctx.set("c", 3)
    async with store.object("Cart", "carol") as ctx:
        ctx.set("a", 10)  # Redis's own rule: setting a field ends its expiry
        ctx.clear("b")
    assert await pttls(client, keys, "a", "b", "c") == [-1, -2, -1]
    assert not await client.exists(keys.ttls)
    assert await stored_size(client, keys) == await real_size(client, keys)

    async with store.object("Cart", "carol") as ctx:
        ctx.set("a", 11, ttl=30)  # a new expiry replaces the old one
    async with store.object("Cart", "carol") as ctx:
        ctx.set("a", 12, ttl=60)
    [left] = await pttls(client, keys, "a")
    assert 30_000 < left <= 60_000
    assert await ttl_members(client, keys) == [f"{1 + len(packb(12))}:a".encode()]
    assert await stored_size(client, keys) == await real_size(client, keys)

    async with store.object("Cart", "carol") as ctx:
        ctx.clear_all()
        ctx.set("d", 4)
    assert not await client.exists(keys.ttls)
    assert await read_state(client, keys.state) == {b"d": packb(4)}
    assert await stored_size(client, keys) == await real_size(client, keys)


@valkey
async def test_within_one_session_the_last_write_decides(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Cart", "dan")
    async with store.object("Cart", "dan") as ctx:
        ctx.set("a", 1, ttl=60)
        ctx.set("a", 2)  # no ttl: none
        ctx.set("b", 1, ttl=60)
        ctx.clear("b")
        ctx.set("c", 1)
        ctx.set("c", 2, ttl=60)
        assert await ctx.get("c") == 2
    assert await pttls(client, keys, "a", "b") == [-1, -2]
    [c_left] = await pttls(client, keys, "c")
    assert 0 < c_left <= 60_000
    async with store.object("Cart", "dan") as ctx:
        ctx.set("d", 1, ttl=60)
        ctx.clear_all()
        ctx.set("e", 1)
    assert not await client.exists(keys.ttls)
    assert await pttls(client, keys, "e") == [-1]


@valkey
async def test_size_bookkeeping_stays_right_when_keys_expire(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    """Keys expire on their own, some while a session is open: the open and the commit take
    their bytes out of meta b, without reading the state."""
    keys = store.keyspace.object_keys("Log", "x")
    async with store.object("Log", "x") as ctx:
        for i in range(20):
            ctx.set(f"short-{i}", "s" * (i + 1), ttl=0.3)
            ctx.set(f"long-{i}", "l" * (i + 1), ttl=3600)
            ctx.set(f"plain-{i}", "p" * (i + 1))
    assert await stored_size(client, keys) == await real_size(client, keys)
    assert len(await ttl_members(client, keys)) == 40

    # a session opened before the short keys expire commits after: the commit reconciles
    ctx = store.object("Log", "x", state_preload=False)
    await ctx.__aenter__()
    for i in range(20):
        await until(f"short-{i} to expire", gone(client, keys, f"short-{i}"))
    ctx.set("plain-0", "changed")
    await ctx.__aexit__(None, None, None)
    assert await stored_size(client, keys) == await real_size(client, keys)
    assert len(await ttl_members(client, keys)) == 20

    # the same for an open: keys with more ttls, expiring unseen by any commit
    async with store.object("Log", "x") as ctx:
        for i in range(5):
            ctx.set(f"long-{i}", "again", ttl=0.2)
    for i in range(5):
        await until(f"long-{i} to expire", gone(client, keys, f"long-{i}"))
    async with store.object("Log", "x", shared=True) as ctx:
        assert len(await ctx.state_keys()) == 35
    assert await stored_size(client, keys) == await real_size(client, keys)
    assert len(await ttl_members(client, keys)) == 15


@valkey
async def test_an_eager_open_after_expiry_loads_eagerly_without_the_expired_key(
    client: aioredis.Redis,
) -> None:
    """A large value with a short ttl puts the state over the eager size limit; once it
    expired, the stored size says so and the next eager open loads the state again."""
    store = RedisStateStore(client, eager_state_size_limit=10_000)
    try:
        async with store.object("Doc", "d") as ctx:
            ctx.set("title", "hello")
            ctx.set("draft", "x" * 20_000, ttl=0.3)
        async with store.object("Doc", "d") as ctx:
            assert ctx.mode == "lazy"  # over the limit: fell back
        keys = store.keyspace.object_keys("Doc", "d")
        await until("the draft to expire", gone(client, keys, "draft"))
        async with store.object("Doc", "d") as ctx:
            assert ctx.mode == "eager"
            assert ctx._view.cache == {"title": packb("hello")}  # what the open loaded
            assert await ctx.state_keys() == ["title"]
        assert await stored_size(client, keys) == await real_size(client, keys)
    finally:
        await store.aclose()


@valkey
async def test_a_session_stops_returning_a_key_once_it_expired(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Cart", "eve")
    async with store.object("Cart", "eve") as ctx:
        ctx.set("token", "abc", ttl=0.3)
        ctx.set("a", 1)
    # (a shared lazy session on an object makes no open, so it keeps what it read: lazy is
    # shown by an exclusive session, which opens)
    for shared, preload in ((True, True), (True, ["token"]), (False, False)):
        async with store.object("Cart", "eve", shared=shared, state_preload=preload) as ctx:
            assert await ctx.get("token") == "abc"  # read while it lives
            assert "token" in await ctx.state_keys()
            await until("the token to expire", gone(client, keys, "token"))
            assert await ctx.get("token") is None
            assert await ctx.state_keys() == ["a"]
            assert await ctx.get_all() == {"a": 1}
            assert await ctx.get("a") == 1
        async with store.object("Cart", "eve") as ctx:
            ctx.set("token", "abc", ttl=0.3)  # again, for the next mode


@valkey
async def test_when_every_key_expires_the_bookkeeping_follows_the_last(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Session", "s1")
    async with store.object("Session", "s1") as ctx:
        ctx.set("token", "abc", ttl=60)
        ctx.set("csrf", "xyz", ttl=30)
    grace_ms = EMPTY_GRACE_SECONDS * 1000
    meta_left = await client.pttl(keys.state)
    assert grace_ms + 59_000 < meta_left <= grace_ms + 60_000  # the last expiry, then grace
    assert (await read_meta(client, keys.state)).fading
    assert 0 < await client.pttl(keys.ttls) <= meta_left
    async with store.object("Session", "s1") as ctx:
        ctx.set("user", "alice")  # a key without expiry: kept as long as the state
    assert await client.pttl(keys.state) == -1
    assert await client.pttl(keys.ttls) == -1
    assert not (await read_meta(client, keys.state)).fading


@valkey
async def test_replay_workflow_and_purge_with_expiring_keys(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Cart", "fay")
    async with store.object("Cart", "fay", commit_id="inv-1") as ctx:
        ctx.set("token", "abc", ttl=60)
        ctx.set("n", 1)
    first_expiry = await expire_times(client, keys, "token")
    async with store.object("Cart", "fay", commit_id="inv-1") as ctx:  # a retry
        assert ctx.replayed  # recognised, and its commit not applied again
        ctx.set("token", "abc", ttl=60)
        ctx.set("n", 1)
    assert await expire_times(client, keys, "token") == first_expiry
    assert await stored_size(client, keys) == await real_size(client, keys)
    assert await store.purge("Cart", "fay")
    assert not await client.exists(keys.ttls)

    wf = store.keyspace.object_keys("Signup", "wf-1")
    async with store.workflow("Signup", "wf-1", retention=120) as ctx:
        ctx.set("code", 1234, ttl=3600)
    assert 0 < await client.pttl(wf.ttls) <= 120_000  # the object's keys expire together
    assert 0 < await client.pttl(wf.state) <= 120_000


@valkey
async def test_the_server_is_probed_once_per_store_by_the_first_exclusive_open(
    server: Server, store: RedisStateStore
) -> None:
    async with store.object("P", "warm") as ctx:  # the scripts loaded: no SCRIPT LOAD below
        ctx.set("a", 1, ttl=60)

    def scripts() -> list[str]:  # (not the new connection's HELLO, CLIENT SETINFO, PING)
        return [c for c in CountingConnection.sent_log if c in ("EVALSHA", "EVAL", "SCRIPT")]

    async with open_counted_store(server.url) as store:
        async with store.object("P", "p", shared=True):  # a shared session does not probe
            pass
        assert scripts() == ["EVALSHA"]
        assert store.backend.features is None
        CountingConnection.sent_log.clear()
        async with store.object("P", "p") as ctx:
            ctx.set("a", 1, ttl=60)
        assert scripts() == ["EVALSHA"] * 3  # open, probe, commit
        assert store.backend.features is not None
        assert store.backend.features.field_expiry
        assert store.backend.features.server.startswith("Valkey 9.")
        CountingConnection.sent_log.clear()
        async with store.object("P", "p") as ctx:
            ctx.set("a", 2, ttl=60)
        assert scripts() == ["EVALSHA", "EVALSHA"]


@pytest.mark.parametrize(
    "ttl",
    [0, -1, 0.0, timedelta(0), float("nan"), float("inf"), 10**15, True, "10"],
)
async def test_a_bad_ttl_is_refused_at_the_call(store: RedisStateStore, ttl: Any) -> None:
    async with store.object("Cart", "gus") as ctx:
        with pytest.raises(InvalidOptionError, match=r"the ttl of 'Cart'/'gus' state key 'a'"):
            ctx.set("a", 1, ttl=ttl)
        ctx.set("b", 1)  # the session goes on
    async with store.object("Cart", "gus", shared=True) as ctx:
        assert await ctx.state_keys() == ["b"]


@valkey
async def test_a_sub_millisecond_ttl_is_one_millisecond(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Cart", "hal")
    async with store.object("Cart", "hal") as ctx:
        ctx.set("a", 1, ttl=0.0001)
        assert ctx._writes.ttls == {"a": 1}
    await until("a to expire", gone(client, keys, "a"))
    assert await read_state(client, keys.state) == {}


# -- Redis 7.0: no hash-field expiry -------------------------------------------------------------


@redis70
async def test_a_ttl_on_redis_7_0_fails_at_the_call_naming_the_server(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Cart", "ida")
    async with store.object("Cart", "ida") as ctx:
        with pytest.raises(ServerFeatureError) as caught:
            ctx.set("token", "abc", ttl=60)
        ctx.set("n", 1)  # everything else keeps working, in the same session
    message = str(caught.value)
    assert "'Cart'/'ida' state key 'token'" in message
    assert "Redis 7.0." in message and "no hash-field expiry" in message
    assert "Redis 7.4+ or Valkey 9+" in message
    assert isinstance(caught.value, UsageError)
    assert await read_state(client, keys.state) == {b"n": packb(1)}
    assert not await client.exists(keys.ttls)


@redis70
async def test_the_commit_refuses_a_ttl_the_probe_did_not_catch(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    """A probe that asked another server (a failover to an older one, a mixed cluster): the
    commit checks before it writes anything, and frees the lease."""
    keys = store.keyspace.object_keys("Cart", "jo")
    async with store.object("Cart", "jo") as ctx:
        ctx.set("n", 1)
    with pytest.raises(
        ServerFeatureError, match=r"Redis 7\.0\.\d+ has no hash-field expiry.*nothing was written"
    ):
        async with store.object("Cart", "jo", state_preload=False) as ctx:
            store.backend.features = None  # as if never probed
            ctx.set("n", 2)
            ctx.set("token", "abc", ttl=60)
    assert await read_state(client, keys.state) == {b"n": packb(1)}
    assert (await read_meta(client, keys.state)).version == 1
    assert not await client.exists(keys.lease)  # released: the next session need not wait
    assert store.backend.features is not None and not store.backend.features.field_expiry
    with pytest.raises(ServerFeatureError, match=r"Redis 7\.0"):  # now known at the call
        async with store.object("Cart", "jo") as ctx:
            ctx.set("token", "abc", ttl=60)
