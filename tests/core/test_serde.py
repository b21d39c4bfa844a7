"""Values: msgpack by default, JSON and bytes serdes, a user's own, and type_hint conversion."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import uuid
from typing import Any

import msgspec
import pydantic
import pytest
import redis.asyncio as aioredis

from restate_redis import BytesSerde, JsonSerde, RedisStateStore, Serde


@dataclasses.dataclass
class Item:
    sku: str
    qty: int
    added: dt.datetime


@dataclasses.dataclass
class Cart:
    owner: str
    items: list[Item]
    note: str | None = None


class Profile(pydantic.BaseModel):
    name: str
    age: int
    tags: list[str] = []


class Point(msgspec.Struct):
    x: float
    y: float


class Color(enum.Enum):
    RED = "red"


WHEN = dt.datetime(2026, 11, 25, 12, 30, tzinfo=dt.UTC)

CASES: list[tuple[Any, Any]] = [
    (42, int),
    (2**60, int),
    (1.5, float),
    (3, float),
    ("text ☃", str),
    (b"\x00\xffbin", bytes),
    (True, bool),
    ([1, 2, 3], list[int]),
    ({"a": 1}, dict[str, int]),
    ({1: "x"}, dict[int, str]),
    ((1, "a"), tuple[int, str]),
    (WHEN, dt.datetime),
    (dt.date(2026, 1, 2), dt.date),
    (uuid.UUID(int=7), uuid.UUID),
    (Color.RED, Color),
    (Cart("ann", [Item("x", 2, WHEN)], None), Cart),
    (Profile(name="bo", age=3, tags=["a"]), Profile),
    (Point(1.0, 2.5), Point),
    (None, int | None),
]


@pytest.mark.parametrize(("value", "hint"), CASES, ids=[repr(h) for _, h in CASES])
@pytest.mark.parametrize("serde", [None, JsonSerde()], ids=["msgpack", "json"])
async def test_type_hint_round_trip(
    store: RedisStateStore, value: Any, hint: Any, serde: Serde[Any] | None
) -> None:
    async with store.object("Svc", "o") as ctx:
        ctx.set("v", value, serde=serde)
    async with store.object("Svc", "o", shared=True) as ctx:
        got = await ctx.get("v", serde=serde, type_hint=hint)
    assert got == value
    if isinstance(hint, type):
        assert type(got) is hint


async def test_json_serde_is_readable_in_redis(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    async with store.object("Svc", "o") as ctx:
        ctx.set("cart", Cart("ann", [Item("x", 2, WHEN)]), serde=JsonSerde())
    raw = await client.hget(store.keyspace.object_keys("Svc", "o").state, "cart")
    assert json.loads(raw) == {  # type: ignore[arg-type]
        "owner": "ann",
        "items": [{"sku": "x", "qty": 2, "added": "2026-11-25T12:30:00+00:00"}],
        "note": None,
    }


async def test_bytes_serde_stores_bytes_verbatim(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    async with store.object("Svc", "o") as ctx:
        ctx.set("blob", b"\x00raw\xff", serde=BytesSerde())
        assert await ctx.get("blob", serde=BytesSerde()) == b"\x00raw\xff"
    raw = await client.hget(store.keyspace.object_keys("Svc", "o").state, "blob")
    assert raw == b"\x00raw\xff"


class Rot13(Serde[str]):
    """A user's own serde."""

    def serialize(self, obj: str) -> bytes:
        return obj.translate(str.maketrans("abc", "nop")).encode()

    def deserialize(self, buf: bytes) -> str:
        return buf.decode().translate(str.maketrans("nop", "abc"))


async def test_custom_serde_as_store_default(client: aioredis.Redis) -> None:
    store = RedisStateStore(client, serde=Rot13())
    async with store.object("Svc", "o") as ctx:
        ctx.set("s", "cab")
    assert await client.hget(store.keyspace.object_keys("Svc", "o").state, "s") == b"pno"
    async with store.object("Svc", "o", shared=True) as ctx:
        assert await ctx.get("s") == "cab"


async def test_msgpack_is_the_default(store: RedisStateStore, client: aioredis.Redis) -> None:
    async with store.object("Svc", "o") as ctx:
        ctx.set("m", {"k": [1, 2]})
    raw = await client.hget(store.keyspace.object_keys("Svc", "o").state, "m")
    assert raw == b"\x81\xa1k\x92\x01\x02"
