"""Key names: reversible encoding of arbitrary names, one cluster slot per object."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from restate_redis import InvalidNameError, Keyspace, RedisStateStore
from restate_redis.keyspace import decode_name, encode_name, glob_escape
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
    assert sorted(fields) == sorted([b"", "ünï {x}:*".encode()])


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
    """meta t: the server's time of the last applied commit; a replay, a session that writes
    nothing and a read leave it; a purge removes it with the rest."""
    meta = store.keyspace.object_keys("Svc", "t").meta
    before = await server_ms(client)
    async with store.object("Svc", "t", commit_id="inv-1") as ctx:
        ctx.set("a", 1)
    after = await server_ms(client)
    first = await client.hget(meta, "t")
    assert first is not None and first.isdigit()
    assert before <= int(first) <= after
    for _ in range(1000):  # so that the next commit lands in a later ms
        if await server_ms(client) > int(first):
            break
        await asyncio.sleep(0.001)
    async with store.object("Svc", "t", commit_id="inv-1") as ctx:  # a replay: not applied
        ctx.set("a", 1)
    async with store.object("Svc", "t") as ctx:  # nothing written
        await ctx.get("a")
    async with store.object("Svc", "t", shared=True) as ctx:
        await ctx.get("a")
    assert await client.hget(meta, "t") == first
    async with store.object("Svc", "t") as ctx:
        ctx.clear("a")  # the state empties: still a change, kept for the grace period
    assert int(await client.hget(meta, "t") or 0) > int(first)
    assert await store.purge("Svc", "t")
    assert await client.exists(meta) == 0
