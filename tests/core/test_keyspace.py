"""Key names: reversible encoding of arbitrary names, one cluster slot per object."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import msgpack
import pytest
import redis
import redis.asyncio as aioredis

from restate_redis import InvalidNameError, Keyspace, RedisStateStore, WrongTypeError
from restate_redis.keyspace import (
    META_FIELD,
    PRIOR_FIELD,
    commit_tag,
    decode_name,
    encode_name,
    glob_escape,
)
from tests.support.keys import read_meta, read_state, state_names
from tests.support.servers import Server, running_server

ODD = ["{", "}", "{x}", "a:b", "*", "?", "[ab]", "a/b", "with space", "ünïcødé ☃", "", "%41", "\\"]


@pytest.mark.parametrize("name", ODD)
def test_encoding_is_reversible_and_free_of_special_characters(name: str) -> None:
    enc = encode_name(name)
    assert decode_name(enc) == name
    assert not set(enc) & set("{}:*?[]\\ ")


@pytest.mark.parametrize("key", ODD)
async def test_odd_object_keys_round_trip(store: RedisStateStore, key: str) -> None:
    async with store.object("Sv c{}", key) as ctx:
        ctx.set("state {key}: *", key)
        assert ctx.key() == key
    async with store.object("Sv c{}", key, shared=True) as ctx:
        assert await ctx.get("state {key}: *") == key
        assert await ctx.state_keys() == ["state {key}: *"]
    for k in [store.keyspace.object_keys("Sv c{}", key).state]:
        assert store.keyspace.parse(k) == ("Sv c{}", key, "state")


async def test_state_hash_fields_are_the_state_key_names_verbatim(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    async with store.object("Svc", "o") as ctx:
        ctx.set("ünï {x}:*", 1)
        ctx.set("", 2)
    fields = await client.hkeys(store.keyspace.object_keys("Svc", "o").state)
    assert state_names(fields) == {b"", "ünï {x}:*".encode()}
    assert len(fields) == 3  # and the bookkeeping, one reserved field


async def test_scan_patterns_match_only_their_service(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    for service, key in [("S*", "a"), ("S*", "b*"), ("Sx", "a"), ("S", "a"), ("S*x", "a")]:
        async with store.object(service, key) as ctx:
            ctx.set("v", 1)
    ks = store.keyspace
    found = {ks.parse(k)[:2] async for k in client.scan_iter(match=ks.object_pattern("S*"))}  # type: ignore[index]
    assert found == {("S*", "a"), ("S*", "b*")}
    found = {
        ks.parse(k)[:2]  # type: ignore[index]
        async for k in client.scan_iter(match=ks.object_pattern("S*", prefix="b*"))
    }
    assert found == {("S*", "b*")}
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


@pytest.mark.parametrize("bad", ["", "a{b", "}"])
def test_namespace_must_be_usable(bad: str) -> None:
    with pytest.raises(InvalidNameError, match="namespace"):
        Keyspace(bad)


@pytest.fixture(scope="module")
def cluster_node() -> Iterator[Server]:
    """A cluster-enabled server: CLUSTER KEYSLOT answers there."""
    with running_server("redis", "--cluster-enabled", "yes") as srv:
        yield srv


@pytest.mark.parametrize("key", ODD)
def test_all_keys_of_one_object_share_one_slot(cluster_node: Server, key: str) -> None:
    keys = Keyspace("restate").object_keys("Sv{c}:", key).all
    with redis.Redis(port=cluster_node.port) as r:
        slots = {r.execute_command("CLUSTER", "KEYSLOT", k) for k in keys}
    assert len(slots) == 1, (keys, slots)


async def server_ms(client: aioredis.Redis) -> int:
    secs, micros = await client.time()
    return int(secs) * 1000 + int(micros) // 1000


async def test_meta_keeps_the_time_of_the_last_change(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    """The bookkeeping's t: the server's time of the last applied commit (whole seconds); a
    replay, a session that writes nothing and a read leave it; a purge removes it with the
    rest."""
    state = store.keyspace.object_keys("Svc", "t").state
    before = await server_ms(client)
    async with store.object("Svc", "t", commit_id="inv-1") as ctx:
        ctx.set("a", 1)
    after = await server_ms(client)
    first = (await read_meta(client, state)).changed_ms
    assert first is not None
    assert before // 1000 * 1000 <= first <= after
    for _ in range(300):  # so that the next commit lands in a later second
        if await server_ms(client) >= first + 1000:
            break
        await asyncio.sleep(0.01)
    async with store.object("Svc", "t", commit_id="inv-1") as ctx:  # a replay: not applied
        ctx.set("a", 1)
    async with store.object("Svc", "t") as ctx:  # nothing written
        await ctx.get("a")
    async with store.object("Svc", "t", shared=True) as ctx:
        await ctx.get("a")
    assert (await read_meta(client, state)).changed_ms == first
    async with store.object("Svc", "t") as ctx:
        ctx.clear("a")  # the state empties: still a change, kept for the grace period
    assert ((await read_meta(client, state)).changed_ms or 0) > first
    assert await store.purge("Svc", "t")
    assert await client.exists(state) == 0


async def test_a_version_1_object_is_moved_into_its_state_hash_by_its_next_session(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    """Keyspace version 1 kept the bookkeeping in a meta hash and the prior values of the last
    recorded commit in a prev hash: the first script to meet the object moves both in, at
    once, and the object goes on where it was (its version, its replay protection)."""
    keys = store.keyspace.object_keys("Cart", "v1")
    await client.hset(keys.state, mapping={"n": msgpack.packb(2), "tag": msgpack.packb("x")})
    await client.hset(
        keys.v1_meta, mapping={"v": "7", "b": "9", "t": "1700000000000", "c": "inv-7", "pf": "0"}
    )
    await client.hset(keys.v1_prev, mapping={"n": b"+" + msgpack.packb(1), "tag": "-"})
    await client.pexpire(keys.v1_meta, 600_000)
    await client.pexpire(keys.state, 600_000)

    # a retry of the last commit of version 1 is recognised, and sees the state before it
    async with store.object("Cart", "v1", commit_id="inv-7") as ctx:
        assert ctx.replayed
        assert await ctx.get_all() == {"n": 1}
    assert await client.exists(keys.v1_meta, keys.v1_prev) == 0
    meta = await read_meta(client, keys.state)
    assert (meta.version, meta.size, meta.changed_ms) == (7, 9, 1700000000000)  # in seconds
    assert meta.commit == commit_tag("inv-7")
    assert 0 < await client.pttl(keys.state) <= 600_000
    async with store.object("Cart", "v1") as ctx:
        assert await ctx.get_all() == {"n": 2, "tag": "x"}
        ctx.set("n", 3)
    assert ctx.version == 8


async def test_a_version_1_bookkeeping_of_the_wrong_type_is_refused_before_any_write(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Cart", "v1bad")
    await client.hset(keys.state, "n", msgpack.packb(1))
    await client.set(keys.v1_meta, "not a hash")
    with pytest.raises(WrongTypeError, match="meta"):
        async with store.object("Cart", "v1bad") as ctx:
            ctx.set("n", 2)
    assert await read_state(client, keys.state) == {b"n": msgpack.packb(1)}
    assert await client.hget(keys.state, META_FIELD) is None


async def test_small_prior_values_live_in_the_bookkeeping_and_large_ones_beside_it(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    """A replay needs the prior values of the last recorded commit: up to 32 packed bytes
    they are part of the bookkeeping field (no field of their own, as an idle object should
    cost little more than its state), larger ones have the field "\\xfe"."""
    keys = store.keyspace.object_keys("Cart", "prior")
    async with store.object("Cart", "prior") as ctx:
        ctx.set("n", 1)
    async with store.object("Cart", "prior", commit_id="small") as ctx:
        ctx.set("n", 2)
    assert "q" in (await read_meta(client, keys.state)).flags
    assert await client.hget(keys.state, PRIOR_FIELD) is None
    async with store.object("Cart", "prior", commit_id="small") as ctx:  # its replay
        assert ctx.replayed and await ctx.get("n") == 1

    async with store.object("Cart", "prior", commit_id="large") as ctx:
        ctx.set("n", "x" * 100)
    async with store.object("Cart", "prior", commit_id="large2") as ctx:
        ctx.set("n", 3)
    meta = await read_meta(client, keys.state)
    assert "p" in meta.flags and "q" not in meta.flags
    assert msgpack.unpackb(await client.hget(keys.state, PRIOR_FIELD), raw=True) == [
        b"n",
        b"+" + msgpack.packb("x" * 100),
    ]
    async with store.object("Cart", "prior", commit_id="large2") as ctx:  # its replay
        assert ctx.replayed and await ctx.get("n") == "x" * 100
    async with store.object("Cart", "prior") as ctx:  # no commit id: nothing recorded
        ctx.set("n", 4)
    assert await client.hget(keys.state, PRIOR_FIELD) is None
    assert not set((await read_meta(client, keys.state)).flags) & {"p", "q"}
