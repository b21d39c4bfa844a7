"""admin.py: list, read, replace, set, patch and clear state on a real server."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis

from restate_redis import (
    InvalidPatchError,
    LeaseTimeoutError,
    RedisStateStore,
    StateEncodeError,
    StateError,
    UnknownObjectError,
    VersionConflictError,
)
from restate_redis.admin import Admin, decode_value, encode_value
from restate_redis.serde import JsonSerde, MsgPackSerde


async def put(store: RedisStateStore, service: str, key: str, **values: object) -> int:
    async with store.object(service, key) as s:
        for name, value in values.items():
            s.set(name, value)
    return s.version


async def stored(
    client: aioredis.Redis, store: RedisStateStore, service: str, key: str
) -> dict[str, Any]:
    state_key = store.keyspace.object_keys(service, key).state
    raw: dict[bytes, bytes] = await client.hgetall(state_key)  # type: ignore[assignment]
    return {k.decode(): msgpack.unpackb(v, raw=False) for k, v in raw.items()}


async def test_read_unknown_object_is_empty(store: RedisStateStore) -> None:
    state = await Admin(store).read("Counter", "nobody")
    assert (state.exists, state.version, state.values, state.workflow_status) == (
        False,
        0,
        {},
        None,
    )


async def test_read_values_sizes_version(store: RedisStateStore) -> None:
    await put(store, "Cart", "alice", items=["a", {"n": 2}], total=3.5)
    version = await put(store, "Cart", "alice", blob=b"\x00\xff", note=None)
    state = await Admin(store).read("Cart", "alice")
    assert state.exists and state.version == version == 2
    assert state.values == {
        "blob": {"$base64": base64.b64encode(b"\x00\xff").decode()},
        "items": ["a", {"n": 2}],
        "note": None,
        "total": 3.5,
    }
    assert list(state.values) == sorted(state.values)
    assert state.sizes["blob"] == len(msgpack.packb(b"\x00\xff", use_bin_type=True))
    assert state.kind == "object" and state.retention_ms is None


def test_markers_round_trip() -> None:
    serde = MsgPackSerde()
    undecodable = b"\xc1\x00"  # 0xc1 is never used by msgpack
    shown = decode_value(serde, undecodable)
    assert shown == {"$raw": base64.b64encode(undecodable).decode()}
    assert encode_value(serde, shown) == undecodable
    int_keys = msgpack.packb({1: "a"})  # JSON has no int keys: kept raw, round trips
    assert encode_value(serde, decode_value(serde, int_keys)) == int_keys
    nested = msgpack.packb({"k": [b"\x01"]}, use_bin_type=True)
    assert decode_value(serde, nested) == {"k": [{"$base64": "AQ=="}]}
    assert encode_value(serde, decode_value(serde, nested)) == nested
    assert decode_value(JsonSerde(), b'{"a": "<script>"}') == {"a": "<script>"}
    with pytest.raises(ValueError, match="invalid base64"):
        encode_value(serde, {"$raw": "!!"})


async def test_replace_is_one_commit_and_keeps_undecodable_values(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    await put(store, "Cart", "bob", a=1, b=2)
    keys = store.keyspace.object_keys("Cart", "bob")
    await client.hset(keys.state, "raw", b"\xc1")
    admin = Admin(store)
    before = await admin.read("Cart", "bob")
    doc = dict(before.values)
    doc.pop("a")
    doc["c"] = {"x": [1, 2]}
    version = await admin.replace("Cart", "bob", doc, expected_version=before.version)
    assert version == before.version + 1
    assert await client.hget(keys.state, "raw") == b"\xc1"
    assert sorted(await client.hkeys(keys.state)) == [b"b", b"c", b"raw"]
    assert msgpack.unpackb(await client.hget(keys.state, "c")) == {"x": [1, 2]}
    # the same state again changes nothing, not even the version
    assert await admin.replace("Cart", "bob", doc, expected_version=version) == version


async def test_version_conflict_writes_nothing(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    await put(store, "Cart", "carol", a=1)
    admin = Admin(store)
    seen = await admin.read("Cart", "carol")
    await put(store, "Cart", "carol", a=2)  # a concurrent writer
    with pytest.raises(VersionConflictError, match=r"version 2.*expected version 1"):
        await admin.replace("Cart", "carol", {"a": 100}, expected_version=seen.version)
    with pytest.raises(VersionConflictError):
        await admin.set("Cart", "carol", "a", 100, expected_version=seen.version)
    with pytest.raises(VersionConflictError):
        await admin.clear_all("Cart", "carol", expected_version=seen.version)
    assert await stored(client, store, "Cart", "carol") == {"a": 2}
    await admin.replace("Cart", "carol", {"a": 100})  # forced
    assert await stored(client, store, "Cart", "carol") == {"a": 100}


async def test_unknown_object_and_state_key(store: RedisStateStore) -> None:
    admin = Admin(store)
    for call in (
        admin.replace("Cart", "nobody", {"a": 1}),
        admin.patch("Cart", "nobody", '[{"op": "add", "path": "/a", "value": 1}]'),
        admin.clear_all("Cart", "nobody"),
        admin.clear("Cart", "nobody", "a"),
    ):
        with pytest.raises(UnknownObjectError, match="'Cart'/'nobody' does not exist"):
            await call
    await put(store, "Cart", "dave", a=1)
    with pytest.raises(UnknownObjectError, match="state key 'zzz' does not exist"):
        await admin.clear("Cart", "dave", "zzz")
    assert (await admin.read("Cart", "nobody")).exists is False  # nothing was created


async def test_set_creates_and_clear(store: RedisStateStore, client: aioredis.Redis) -> None:
    admin = Admin(store)
    v1 = await admin.set("Cart", "erin", "a", {"deep": [1]})
    v2 = await admin.set("Cart", "erin", "b", {"$base64": "AAE="}, expected_version=v1)
    assert await stored(client, store, "Cart", "erin") == {"a": {"deep": [1]}, "b": b"\x00\x01"}
    v3 = await admin.clear("Cart", "erin", "a", expected_version=v2)
    assert await stored(client, store, "Cart", "erin") == {"b": b"\x00\x01"}
    await admin.clear_all("Cart", "erin", expected_version=v3)
    assert await stored(client, store, "Cart", "erin") == {}
    state = await admin.read("Cart", "erin")
    assert state.exists and state.values == {} and state.version == v3 + 1


async def test_set_rejects_what_the_serde_cannot_encode(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    small = RedisStateStore(client, max_value_bytes=10)
    with pytest.raises(Exception, match="max_value_bytes=10"):
        await Admin(small).set("Cart", "x", "big", "y" * 100)
    with pytest.raises(StateEncodeError, match="invalid base64"):
        await Admin(store).set("Cart", "x", "bad", {"$raw": "***"})
    assert (await Admin(store).read("Cart", "x")).exists is False


async def test_patch(store: RedisStateStore, client: aioredis.Redis) -> None:
    await put(store, "Cart", "fay", items=["a"], n=1, gone=True)
    admin = Admin(store)
    ops = [
        {"op": "add", "path": "/items/-", "value": "b"},
        {"op": "replace", "path": "/n", "value": 2},
        {"op": "remove", "path": "/gone"},
        {"op": "add", "path": "/new", "value": {"k": None}},
    ]
    await admin.patch("Cart", "fay", ops, expected_version=1)
    want = {"items": ["a", "b"], "n": 2, "new": {"k": None}}
    assert await stored(client, store, "Cart", "fay") == want
    failing = '[{"op": "test", "path": "/n", "value": 99}, {"op": "remove", "path": "/n"}]'
    with pytest.raises(InvalidPatchError, match="does not apply"):
        await admin.patch("Cart", "fay", failing)
    with pytest.raises(InvalidPatchError, match="invalid JSON Patch"):
        await admin.patch("Cart", "fay", "[{")
    with pytest.raises(InvalidPatchError, match="must stay a JSON object"):
        await admin.patch("Cart", "fay", [{"op": "replace", "path": "", "value": [1]}])
    with pytest.raises(VersionConflictError):
        await admin.patch("Cart", "fay", [{"op": "remove", "path": "/n"}], expected_version=1)
    assert await stored(client, store, "Cart", "fay") == want


async def test_services_listing_paging_and_prefix(store: RedisStateStore) -> None:
    admin = Admin(store)
    odd = "we:ird{*}? [k]"
    for i in range(130):
        await put(store, "Counter", f"{'a' if i % 2 else 'b'}-{i:03d}", n=i)
    await put(store, "Other:{svc}*", odd, n=1)
    assert [(s.name, s.objects) for s in await admin.services()] == [
        ("Counter", 130),
        ("Other:{svc}*", 1),
    ]
    seen: list[str] = []
    cursor, pages = 0, 0
    while True:
        page = await admin.list_objects("Counter", cursor=cursor, limit=40)
        seen += [o.key for o in page.objects]
        pages += 1
        cursor = page.cursor
        if cursor == 0:
            break
        assert pages < 50
    assert pages >= 2  # SCAN visits about 100 keys a call: 130 objects take several pages
    assert sorted(set(seen)) == sorted(f"{'a' if i % 2 else 'b'}-{i:03d}" for i in range(130))
    prefixed = [k async for k in admin.iter_objects("Counter", prefix="a-")]
    assert sorted(prefixed) == sorted(f"a-{i:03d}" for i in range(1, 130, 2))
    odd_page = await admin.list_objects("Other:{svc}*", prefix="we:ird{*")
    assert [o.key for o in odd_page.objects] == [odd] and odd_page.cursor == 0
    assert [k async for k in admin.iter_objects("Other:{svc}*", prefix="we:irdX")] == []


async def test_clear_service_leaves_other_services(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    for i in range(20):
        await put(store, "Counter", f"k{i}", n=i)
    await put(store, "Keep", "k1", n=1)
    admin = Admin(store)
    assert await admin.clear_service("Counter") == 20
    for i in range(20):
        assert await stored(client, store, "Counter", f"k{i}") == {}
    assert await stored(client, store, "Keep", "k1") == {"n": 1}
    assert await admin.clear_service("Counter") == 0


async def test_clear_service_clears_the_rest_when_one_object_is_busy(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    for i in range(5):
        await put(store, "Counter", f"k{i}", n=i)
    impatient = Admin(RedisStateStore(client, acquire_timeout=0.2))
    async with store.object("Counter", "k3"):  # a running handler
        with pytest.raises(StateError, match=r"cleared 4 of the 5 objects.*1 failed.*'k3'"):
            await impatient.clear_service("Counter")
    for i in range(5):
        assert await stored(client, store, "Counter", f"k{i}") == ({"n": 3} if i == 3 else {})


async def test_workflow_status_retention_survives_edit(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    admin = Admin(store)
    async with store.workflow("Signup", "wf-1") as run:
        run.set("step", "mailed")
        running = await admin.read("Signup", "wf-1")
    assert running.workflow_status == "running" and running.retention_ms is None
    page = await admin.list_objects("Signup")
    assert [(o.key, o.kind, o.workflow_status) for o in page.objects] == [
        ("wf-1", "workflow", "completed")
    ]
    done = await admin.read("Signup", "wf-1")
    assert done.workflow_status == "completed" and done.kind == "workflow"
    day_ms = int(store.workflow_retention * 1000)
    assert done.retention_ms is not None and 0 < done.retention_ms <= day_ms
    # replacing the whole state recreates the state hash: it must keep the expiry
    await admin.replace("Signup", "wf-1", {"step": "fixed"}, expected_version=done.version)
    await admin.clear("Signup", "wf-1", "step")
    await admin.set("Signup", "wf-1", "again", 1)
    keys = store.keyspace.object_keys("Signup", "wf-1")
    for redis_key in (keys.state, keys.meta):
        assert 0 < await client.pttl(redis_key) <= day_ms
    assert (await admin.read("Signup", "wf-1")).workflow_status == "completed"


async def test_edit_waits_for_the_lease_then_times_out(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    await put(store, "Counter", "busy", n=1)
    impatient = Admin(RedisStateStore(client, acquire_timeout=0.2))
    async with store.object("Counter", "busy") as handler:
        with pytest.raises(LeaseTimeoutError, match="could not acquire the lease"):
            await impatient.set("Counter", "busy", "n", 99)
        edit = asyncio.create_task(Admin(store).set("Counter", "busy", "n", 42))
        await asyncio.sleep(0)  # let the edit start waiting while the handler holds the lease
        handler.set("n", 2)
        assert not edit.done()
    await asyncio.wait_for(edit, 10)
    # the handler's commit went first, the edit after it: nothing interleaved
    assert await stored(client, store, "Counter", "busy") == {"n": 42}
    assert (await Admin(store).read("Counter", "busy")).version == 3


async def test_stray_keys_are_skipped_and_counted(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    from restate_redis.admin import ServiceInfo, SkippedKeys

    admin = Admin(store)
    await put(store, "Cart", "alice", n=1)
    await put(store, "Cart", "bob", n=2)
    await client.hset(b"restate:{Cart:%C3}:meta", "v", "1")  # half a UTF-8 sequence
    await client.hset(b"restate:{Cart:%}:state", "a", b"\x01")  # no hex digits
    await client.hset(b"restate:{Cart:%41}:meta", "v", "1")  # "A", which is never encoded
    await client.hset(b"restate:{%fe:x}:meta", "v", "1")  # a service that does not decode
    await client.set("restate:{Cart:s}:meta", "1")
    await client.rpush("restate:{Cart:l}:state", "x")
    await client.hset("restate:{Cart:l}:meta", "v", "1")
    await client.hset("restate:{Cart:nometa}:state", "a", b"\x01")
    await client.hset("restate:{Cart:v}:meta", mapping={"v": "x1"})
    await client.hset("restate:{Cart:v}:state", "a", b"\x01")
    found = await admin.services()
    assert found == [ServiceInfo("Cart", 2)]
    assert found.skipped.count == 8 and len(found.skipped.examples) == 5
    page = await admin.list_objects("Cart")
    assert [o.key for o in page.objects] == ["alice", "bob"] and page.skipped.count == 7
    skipped = SkippedKeys()
    assert sorted([k async for k in admin.iter_objects("Cart", skipped=skipped)]) == [
        "alice",
        "bob",
    ]
    assert skipped.count == 7
    assert (await admin.read("Cart", "alice")).values == {"n": 1}
    assert await admin.clear_service("Cart") == 2


async def test_objects_without_state_are_not_listed(store: RedisStateStore) -> None:
    admin = Admin(store)
    await put(store, "Cart", "a", n=1)
    await put(store, "Cart", "b", n=1)
    async with store.object("Cart", "a") as s:
        s.clear_all()
    await admin.clear_all("Cart", "b")
    async with store.workflow("Signup", "empty"):
        pass
    assert [(s.name, s.objects) for s in await admin.services()] == [("Signup", 1)]
    assert (await admin.list_objects("Cart")).objects == []
    assert [o.key for o in (await admin.list_objects("Signup")).objects] == ["empty"]
    assert await admin.clear_service("Cart") == 0
