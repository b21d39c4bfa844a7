"""admin.py: list, read, replace, set, patch and clear state on a real server."""

from __future__ import annotations

import asyncio
import base64
import json
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
from restate_redis.keyspace import META_FIELD
from restate_redis.serde import JsonSerde, MsgPackSerde
from restate_redis.tools.admin import Admin, decode_value, encode_value, load_json
from tests.support.bookkeeping import packed_meta
from tests.support.keys import meta_of, state_fields, state_names


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
    return {k.decode(): msgpack.unpackb(v, raw=False) for k, v in state_fields(raw).items()}


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
    assert sorted(state_names(await client.hkeys(keys.state))) == [b"b", b"c", b"raw"]
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
    keys = store.keyspace.object_keys("Signup", "wf-1")  # the bookkeeping is in the state hash
    assert meta_of(await client.hgetall(keys.state)).workflow == "completed"
    assert 0 < await client.pttl(keys.state) <= day_ms
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


# -- edits keep the bytes of what they did not change ------------------------------------------

# Bytes another encoder wrote: each decodes to plain data, but re-encoding it would differ.
FOREIGN_MSGPACK = {
    "f32": msgpack.packb(1.5, use_single_float=True),
    "f32_inexact": msgpack.packb(0.1, use_single_float=True),
    "wide_int": b"\xcd\x00\x05",  # uint16 for 5
    "key_order": msgpack.packb({"b": 1, "a": {"z": 1, "y": 2}}),
    "str8": b"\xd9\x02hi",  # str8 header for a 2-byte string
    "array16": b"\xdc\x00\x02\x01\xc3",  # array16 header for [1, true]
    "old_raw": msgpack.packb("text", use_bin_type=False),
    "float_one": msgpack.packb(1.0),
    "big_int": msgpack.packb(2**63 + 1),
}
FOREIGN_JSON = {
    "spaced": b'{ "b" : [1,  2], "a": null }',
    "decimal": b"1.50",
    "escaped": b'"\\u0068i"',
    "exponent": b"1E2",
}


def as_user_sees(values: dict[str, Any]) -> dict[str, Any]:
    """The state as a user gets it back from an editor: JSON text with sorted keys."""
    return json.loads(json.dumps(values, indent=2, sort_keys=True))


async def seed_raw(
    client: aioredis.Redis, store: RedisStateStore, service: str, key: str, raw: dict[str, bytes]
) -> None:
    await put(store, service, key, seeded=1)  # the object exists, at version 1
    await client.hset(store.keyspace.object_keys(service, key).state, mapping=raw)  # type: ignore[arg-type]


async def raw_state(
    client: aioredis.Redis, store: RedisStateStore, service: str, key: str
) -> dict[str, bytes]:
    got: dict[bytes, bytes] = await client.hgetall(store.keyspace.object_keys(service, key).state)  # type: ignore[assignment]
    return {k.decode(): v for k, v in state_fields(got).items()}


@pytest.mark.parametrize("serde", [MsgPackSerde(), JsonSerde()], ids=["msgpack", "json"])
async def test_replace_patch_and_set_keep_the_bytes_of_unchanged_values(
    client: aioredis.Redis, serde: Any
) -> None:
    foreign = FOREIGN_MSGPACK if isinstance(serde, MsgPackSerde) else FOREIGN_JSON
    store = RedisStateStore(client, serde=serde, acquire_timeout=10)
    admin = Admin(store)
    await seed_raw(client, store, "Foreign", "k", foreign)
    before = await raw_state(client, store, "Foreign", "k")
    seen = await admin.read("Foreign", "k")

    doc = as_user_sees(seen.values)
    doc["seeded"] = 2
    await admin.replace("Foreign", "k", doc, expected_version=seen.version)
    after = await raw_state(client, store, "Foreign", "k")
    assert after == {**before, "seeded": serde.serialize(2)}

    await admin.patch("Foreign", "k", [{"op": "replace", "path": "/seeded", "value": 3}])
    assert await raw_state(client, store, "Foreign", "k") == {
        **before,
        "seeded": serde.serialize(3),
    }

    # setting a key to the value it shows leaves its bytes (and the version) alone
    version = (await admin.read("Foreign", "k")).version
    for name, value in as_user_sees(seen.values).items():
        if name != "seeded":
            assert await admin.set("Foreign", "k", name, value) == version, name
    assert await raw_state(client, store, "Foreign", "k") == {
        **before,
        "seeded": serde.serialize(3),
    }
    await store.aclose()


async def test_a_change_of_type_between_equal_values_is_a_change(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    await put(store, "Types", "k", one=1, fone=1.0, yes=True, zero=0.0, deep={"n": [1]})
    await client.hset(
        store.keyspace.object_keys("Types", "k").state,
        "f32",
        msgpack.packb(1.5, use_single_float=True),
    )
    admin = Admin(store)
    doc = as_user_sees((await admin.read("Types", "k")).values)
    # 1 == 1.0 == True and 0.0 == -0.0 in Python, yet each is another value to the user
    doc.update(one=1.0, fone=True, yes=1, zero=-0.0, deep={"n": [True]})
    await admin.replace("Types", "k", doc)
    raw = await raw_state(client, store, "Types", "k")
    assert raw["one"] == msgpack.packb(1.0)
    assert raw["fone"] == msgpack.packb(True)
    assert raw["yes"] == msgpack.packb(1)
    assert raw["zero"] == msgpack.packb(-0.0)
    assert raw["deep"] == msgpack.packb({"n": [True]})
    assert raw["f32"] == msgpack.packb(1.5, use_single_float=True)
    await admin.set("Types", "k", "one", 1)
    assert await client.hget(store.keyspace.object_keys("Types", "k").state, "one") == b"\x01"


# -- marker-shaped application values ----------------------------------------------------------

MARKER_SHAPED = [
    {"$base64": "aGk="},
    {"$raw": "x"},
    {"outer": [{"$base64": "aGk="}, {"$raw": "eA=="}]},
    {"$$base64": "aGk=", "$raw": 1},
    {"$$$raw": {"$base64": "aGk="}},
    {"$ref": "#/a", "$base64x": 1},
]


@pytest.mark.parametrize("value", MARKER_SHAPED, ids=[json.dumps(v) for v in MARKER_SHAPED])
async def test_marker_shaped_dicts_round_trip_as_dicts(
    store: RedisStateStore, client: aioredis.Redis, value: dict[str, Any]
) -> None:
    await put(store, "Marks", "k", value=value, other=1)
    admin = Admin(store)
    seen = await admin.read("Marks", "k")
    assert encode_value(store.serde, seen.values["value"]) == msgpack.packb(value)
    doc = as_user_sees(seen.values)
    doc["other"] = 2
    await admin.replace("Marks", "k", doc)
    assert await stored(client, store, "Marks", "k") == {"value": value, "other": 2}
    # the value as shown, set again, then patched elsewhere: still the same dict
    await admin.set("Marks", "k", "copy", as_user_sees(seen.values)["value"])
    await admin.patch("Marks", "k", [{"op": "add", "path": "/n", "value": 1}])
    assert await stored(client, store, "Marks", "k") == {
        "value": value,
        "copy": value,
        "other": 2,
        "n": 1,
    }


def test_marker_escaping_in_the_view() -> None:
    serde = MsgPackSerde()
    shown = decode_value(serde, msgpack.packb({"$base64": "aGk=", "a": {"$$raw": 1, "$x": 2}}))
    assert shown == {"$$base64": "aGk=", "a": {"$$$raw": 1, "$x": 2}}
    assert decode_value(serde, msgpack.packb(b"hi", use_bin_type=True)) == {"$base64": "aGk="}
    assert encode_value(serde, {"$$raw": "x"}) == msgpack.packb({"$raw": "x"})
    assert encode_value(serde, [{"$base64": "aGk="}]) == msgpack.packb([b"hi"], use_bin_type=True)


@pytest.mark.parametrize(
    "value",
    [
        {"$base64": "aGk=", "also": 1},
        {"$base64": 5},
        {"a": {"$raw": "eA=="}},
        {"$raw": "eA==", "also": 1},
    ],
)
async def test_misused_markers_are_refused(
    store: RedisStateStore, client: aioredis.Redis, value: Any
) -> None:
    admin = Admin(store)
    with pytest.raises(StateEncodeError, match=r"\$\$"):
        await admin.set("Marks", "bad", "v", value)
    with pytest.raises(StateEncodeError, match=r"\$\$"):
        await admin.replace("Marks", "bad", {"v": value}, must_exist=False)
    keys = store.keyspace.object_keys("Marks", "bad")
    assert await client.exists(keys.state) == 0  # nothing was written, not even bookkeeping


# -- numbers JSON cannot carry ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), [1, float("-inf")], {"a": {"b": float("nan")}}]
)
async def test_non_finite_numbers_are_refused(
    store: RedisStateStore, client: aioredis.Redis, value: Any
) -> None:
    await put(store, "Nums", "k", n=1)
    admin = Admin(store)
    with pytest.raises(StateEncodeError, match="not a finite number"):
        await admin.set("Nums", "k", "v", value)
    with pytest.raises(StateEncodeError, match="not a finite number"):
        await admin.replace("Nums", "k", {"v": value, "n": 2})
    with pytest.raises(StateEncodeError, match="not a finite number"):
        await admin.patch("Nums", "k", [{"op": "add", "path": "/v", "value": value}])
    assert await stored(client, store, "Nums", "k") == {"n": 1}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"a": NaN}', "line 1 column 7"),
        ('{\n  "a": [1,\n    Infinity]}', "line 3 column 5"),
        ('{"a": "NaN 1e999", "b": -Infinity}', "line 1 column 25"),
        ("[1, 1e999]", "line 1 column 5"),
        (
            '{"big": 100000000000000000000000000000000000000000000000000000000000000000000'
            + "0" * 400
            + ', "x": 1e400}',
            "column 485",
        ),
    ],
)
def test_load_json_refuses_non_finite_numbers_and_says_where(text: str, where: str) -> None:
    with pytest.raises(ValueError, match="not a finite number") as raised:
        load_json(text)
    assert where in str(raised.value)
    assert load_json('{"a": 1.5, "b": [1e300, -0.0]}') == {"a": 1.5, "b": [1e300, -0.0]}


async def test_stray_keys_are_skipped_and_counted(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    from restate_redis.tools.admin import ServiceInfo, SkippedKeys

    admin = Admin(store)
    await put(store, "Cart", "alice", n=1)
    await put(store, "Cart", "bob", n=2)
    meta = {"a": b"\x01", META_FIELD: packed_meta(1, 2)}  # bookkeeping as a session writes it
    await client.hset(b"restate:{Cart:%C3}:state", mapping=meta)  # half a UTF-8 sequence
    await client.hset(b"restate:{Cart:%}:state", mapping=meta)  # no hex digits
    await client.hset(b"restate:{Cart:%41}:state", mapping=meta)  # "A", which is never encoded
    await client.hset(b"restate:{%fe:x}:state", mapping=meta)  # a service that does not decode
    await client.set("restate:{Cart:s}:state", "1")
    await client.rpush("restate:{Cart:l}:state", "x")
    await client.hset("restate:{Cart:nometa}:state", "a", b"\x01")
    bad_version = msgpack.packb(["x1", -1, 0, "", ""])
    await client.hset("restate:{Cart:v}:state", mapping={"a": b"\x01", META_FIELD: bad_version})
    bad_size = msgpack.packb([1, "-3", 0, "", ""])
    await client.hset("restate:{Cart:b}:state", mapping={"a": b"\x01", META_FIELD: bad_size})
    found = await admin.services()
    assert found == [ServiceInfo("Cart", 2, keys=2, bytes=4, eager=2)]  # "n", msgpack 1; twice
    assert found.skipped.count == 9 and len(found.skipped.examples) == 5
    page = await admin.list_objects("Cart")
    assert [o.key for o in page.objects] == ["alice", "bob"] and page.skipped.count == 8
    page = await admin.list_objects("Cart", prefix="b")
    assert [o.key for o in page.objects] == ["bob"]
    (example,) = page.skipped.examples
    assert example.startswith("restate:{Cart:b}:state (bookkeeping ")
    assert "[v, b, t, c, flags]" in example  # says what it should have been
    skipped = SkippedKeys()
    assert sorted([k async for k in admin.iter_objects("Cart", skipped=skipped)]) == [
        "alice",
        "bob",
    ]
    assert skipped.count == 8
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


@pytest.mark.parametrize(
    ("text", "limit", "shown"),
    [
        ("abcdef", 6, "abcdef"),
        ("abcdef", 3, "abc"),
        ('"a\\nb"', 3, '"a'),  # never half an escape
        ('"a\\u0001b"', 7, '"a'),
        ('"a\\u0001b"', 8, '"a\\u0001'),
        ("ae\u0301e\u0301", 2, "a"),  # never an e without its accent
        ("ae\u0301e\u0301", 3, "ae\u0301"),
        ("a\U0001f469\u200d\U0001f4bbb", 3, "a"),  # nor half of a joined emoji
        ("a\U0001f469\u200d\U0001f4bbb", 4, "a\U0001f469\u200d\U0001f4bb"),
        ("x\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea", 2, "x"),  # nor half a flag
        ("x\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea", 4, "x\U0001f1eb\U0001f1f7"),
    ],
)
def test_previews_are_cut_between_whole_characters(text: str, limit: int, shown: str) -> None:
    from restate_redis.tools.admin import cut_preview

    assert cut_preview(text, limit) == (shown, text != shown)


def test_sorting_objects_puts_unknown_values_last_and_ties_by_key() -> None:
    from restate_redis.backend.inventory import ObjectInfo
    from restate_redis.tools.admin import sort_objects

    rows = [
        ObjectInfo("S", "b", size=10, version=2),
        ObjectInfo("S", "a", size=None, version=2),
        ObjectInfo("S", "c", size=10, version=1),
        ObjectInfo("S", "d", size=3, version=5),
    ]
    order = lambda by, desc=False: [o.key for o in sort_objects(rows, by, desc)]  # noqa: E731
    assert order("key") == ["a", "b", "c", "d"] and order("key", True) == ["d", "c", "b", "a"]
    assert order("size") == ["d", "b", "c", "a"] and order("size", True) == ["b", "c", "d", "a"]
    assert order("version", True) == ["d", "a", "b", "c"]
    with pytest.raises(ValueError, match="cannot sort by 'colour'"):
        sort_objects(rows, "colour")


async def test_read_shows_each_keys_time_left_and_set_gives_one(
    store: RedisStateStore, client: aioredis.Redis, server: Any
) -> None:
    """Valkey 9: HPTTL of the keys that have an expiry of their own; a plain edit ends it.
    Redis 7.0: none is shown, and a ttl is refused naming the server."""
    from restate_redis import ServerFeatureError

    admin = Admin(store)
    await put(store, "Cart", "tim", a=1)
    if server.flavour == "redis":
        assert (await admin.read("Cart", "tim")).expiries == {}
        with pytest.raises(ServerFeatureError, match=r"Redis 7\.0\.\d+ has no hash-field"):
            await admin.set("Cart", "tim", "token", "abc", ttl=60)
        assert await stored(client, store, "Cart", "tim") == {"a": 1}
        return
    await admin.set("Cart", "tim", "token", "abc", ttl=600)
    await admin.set("Cart", "tim", "b", 2)
    state = await admin.read("Cart", "tim")
    assert set(state.expiries) == {"token"}
    assert 590_000 < state.expiries["token"] <= 600_000
    await admin.set("Cart", "tim", "token", "abc", ttl=60)  # same value, new expiry
    assert 50_000 < (await admin.read("Cart", "tim")).expiries["token"] <= 60_000
    await admin.set("Cart", "tim", "token", "abc")  # unchanged value: nothing written
    assert "token" in (await admin.read("Cart", "tim")).expiries
    await admin.replace("Cart", "tim", {"a": 1, "b": 2, "token": "new"})  # a changed value
    assert (await admin.read("Cart", "tim")).expiries == {}
    # every key expiring: the hash (its bookkeeping) outlives the last one by the grace
    # period, and that is no expiry of the state
    await admin.set("Cart", "tom", "token", "abc", ttl=600)
    tom = store.keyspace.object_keys("Cart", "tom").state
    assert await client.pttl(tom) > 600_000
    assert meta_of(await client.hgetall(tom)).fading
    state = await admin.read("Cart", "tom")
    assert state.retention_ms is None and 0 < state.expiries["token"] <= 600_000
