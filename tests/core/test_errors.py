"""Every bad input fails at the call that caused it, names what was wrong, writes nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis.asyncio as aioredis

from restate_redis import (
    BytesSerde,
    InvalidNameError,
    JsonSerde,
    ReadOnlySessionError,
    RedisStateStore,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateTypeError,
    ValueTooLargeError,
    WrongTypeError,
)
from restate_redis import errors as errors_module
from tests.support.keys import state_names


async def snapshot(client: aioredis.Redis) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for k in await client.keys("*"):
        if k.endswith(b":wake"):
            continue
        kind = await client.type(k)
        if kind == b"zset":  # the recent commit ids
            out[k] = await client.zrange(k, 0, -1)
        elif kind == b"list":
            out[k] = await client.lrange(k, 0, -1)
        else:
            out[k] = await client.hgetall(k) if kind == b"hash" else await client.get(k)
    return out


@pytest.fixture
async def seeded(store: RedisStateStore, client: aioredis.Redis) -> dict[bytes, Any]:
    async with store.object("Svc", "obj") as ctx:
        ctx.set("a", 1)
    return await snapshot(client)


def test_every_error_derives_from_one_root() -> None:
    classes = [
        v for v in vars(errors_module).values() if isinstance(v, type) and issubclass(v, Exception)
    ]
    assert len(classes) > 10
    assert all(issubclass(c, StateError) for c in classes)
    assert all(c.__doc__ and c.__doc__.strip() for c in classes)


class Unencodable:
    pass


@pytest.mark.parametrize(
    ("value", "serde"),
    [
        (Unencodable(), None),
        ({1, Unencodable()}, None),
        (float("nan"), JsonSerde()),
        ("not bytes", BytesSerde()),
    ],
)
async def test_unencodable_value_fails_in_set(
    store: RedisStateStore, client: aioredis.Redis, seeded: Any, value: Any, serde: Any
) -> None:
    with pytest.raises(StateEncodeError, match=r"'Svc'/'obj' state key 'b'"):
        async with store.object("Svc", "obj") as ctx:
            ctx.set("ok", 2)
            ctx.set("b", value, serde=serde)
    assert await snapshot(client) == seeded


async def test_value_over_max_value_bytes(client: aioredis.Redis) -> None:
    store = RedisStateStore(client, max_value_bytes=100)
    async with store.object("Svc", "obj") as ctx:
        ctx.set("fits", b"x" * 90)
        with pytest.raises(ValueTooLargeError, match=r"'big'.*over max_value_bytes=100"):
            ctx.set("big", b"x" * 200)
    state = store.keyspace.object_keys("Svc", "obj").state
    assert state_names(await client.hkeys(state)) == {b"fits"}


async def test_undecodable_bytes(
    store: RedisStateStore, client: aioredis.Redis, seeded: Any
) -> None:
    state = store.keyspace.object_keys("Svc", "obj").state
    await client.hset(state, "junk", b"\xc1")  # never used in msgpack
    async with store.object("Svc", "obj", shared=True) as ctx:
        with pytest.raises(StateDecodeError, match=r"'Svc'/'obj' state key 'junk'"):
            await ctx.get("junk")
        assert await ctx.get("a") == 1


@pytest.mark.parametrize("hint", [str, list[int], bool, dict[str, int]])
async def test_type_hint_that_does_not_fit(store: RedisStateStore, seeded: Any, hint: Any) -> None:
    async with store.object("Svc", "obj", shared=True) as ctx:
        with pytest.raises(StateTypeError, match=r"'Svc'/'obj' state key 'a'.*type_hint"):
            await ctx.get("a", type_hint=hint)


@dataclasses.dataclass
class Needs:
    x: int
    y: int


async def test_dataclass_hint_with_missing_field(store: RedisStateStore) -> None:
    async with store.object("Svc", "obj") as ctx:
        ctx.set("d", {"x": 1})
    async with store.object("Svc", "obj", shared=True) as ctx:
        with pytest.raises(StateTypeError, match="lacks field 'y'"):
            await ctx.get("d", type_hint=Needs)


@pytest.mark.parametrize("bad", [1, b"a", None, ("a",)])
async def test_state_key_must_be_str(
    store: RedisStateStore, client: aioredis.Redis, seeded: Any, bad: Any
) -> None:
    with pytest.raises(InvalidNameError, match="state key of 'Svc'/'obj' must be a str"):
        async with store.object("Svc", "obj") as ctx:
            ctx.set("fine", 1)
            ctx.set(bad, 1)
    async with store.object("Svc", "obj") as ctx:
        with pytest.raises(InvalidNameError):
            await ctx.get(bad)
        with pytest.raises(InvalidNameError):
            ctx.clear(bad)
    assert await snapshot(client) == seeded


@pytest.mark.parametrize(
    ("service", "key", "match"),
    [
        ("", "k", "must not be empty"),
        (1, "k", "service name must be a str"),
        ("S", 7, "object key of service 'S' must be a str"),
        ("S", "\ud800", "not valid UTF-8"),
    ],
)
def test_service_and_object_key_must_be_str(
    store: RedisStateStore, service: Any, key: Any, match: str
) -> None:
    with pytest.raises(InvalidNameError, match=match):
        store.object(service, key)


async def test_writes_in_a_shared_session_fail_at_once(
    store: RedisStateStore, client: aioredis.Redis, seeded: Any
) -> None:
    async with store.object("Svc", "obj", shared=True) as ctx:
        with pytest.raises(ReadOnlySessionError, match="'Svc'/'obj' is open in a shared session"):
            ctx.set("a", 2)
        with pytest.raises(ReadOnlySessionError):
            ctx.clear("a")
        with pytest.raises(ReadOnlySessionError):
            ctx.clear_all()
    assert await snapshot(client) == seeded


@pytest.mark.parametrize("mode", [True, False])
async def test_wrong_redis_type_at_open(
    store: RedisStateStore, client: aioredis.Redis, mode: bool
) -> None:
    state = store.keyspace.object_keys("Svc", "obj").state
    await client.set(state, "a string")
    with pytest.raises(WrongTypeError, match=r"holds a string, not a hash"):
        async with store.object("Svc", "obj", state_preload=mode) as ctx:
            await ctx.get("a")  # a lazy session opens on its first read
    assert await client.get(state) == b"a string"
    assert await client.exists(store.keyspace.object_keys("Svc", "obj").lease) == 0


async def test_wrong_redis_type_appearing_before_commit_writes_nothing(
    store: RedisStateStore, client: aioredis.Redis, seeded: Any
) -> None:
    keys = store.keyspace.object_keys("Svc", "obj")
    with pytest.raises(WrongTypeError):
        async with store.object("Svc", "obj", state_preload=False) as ctx:
            ctx.set("a", 2)
            ctx.set("b", 3)
            # another writer, not using this library, replaces the hash
            await client.delete(keys.state)
            await client.rpush(keys.state, "x")
    assert await client.lrange(keys.state, 0, -1) == [b"x"]
    others = {k: v for k, v in (await snapshot(client)).items() if k != keys.state.encode()}
    assert others == {k: v for k, v in seeded.items() if k != keys.state.encode()}


async def test_wrong_redis_type_on_lazy_get(store: RedisStateStore, client: aioredis.Redis) -> None:
    keys = store.keyspace.object_keys("Svc", "obj")
    async with store.object("Svc", "obj", state_preload=False, shared=True) as ctx:
        await client.set(keys.state, "x")
        with pytest.raises(WrongTypeError, match="not a hash"):
            await ctx.get("a")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("lease_ttl", 0),
        ("lease_ttl", "10"),
        ("acquire_timeout", -1),
        ("max_value_bytes", 0),
        ("eager_state_size_limit", 1.5),
    ],
)
def test_bad_store_options(client: aioredis.Redis, option: str, value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=option):
        RedisStateStore(client, **{option: value})


def test_client_that_decodes_responses_is_refused() -> None:
    client = aioredis.Redis(decode_responses=True)
    with pytest.raises(StateError, match="decode_responses=False"):
        RedisStateStore(client)


@pytest.mark.parametrize("bad", ["eager", 3, {"a"}, None])
def test_bad_state_preload(store: RedisStateStore, bad: Any) -> None:
    with pytest.raises(TypeError, match="state_preload"):
        store.object("S", "k", state_preload=bad)


def test_store_options_are_the_same_in_both_constructors_and_documented() -> None:
    import inspect
    from pathlib import Path

    def options(func: object) -> dict[str, object]:
        params = inspect.signature(func).parameters.values()  # type: ignore[arg-type]
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}

    init = options(RedisStateStore.__init__)
    assert len(init) > 10
    assert init == options(RedisStateStore.from_url)
    page = Path(__file__).resolve().parents[2] / "docs" / "guide" / "api.md"
    table = page.read_text().split("## Store options", 1)[1].split("\n## ", 1)[0]
    assert [name for name in init if f"| `{name}` |" not in table] == []


@pytest.mark.parametrize(
    "options",
    [
        {"lease_ttl": 0},
        {"lease_ttl": "10s"},
        {"eager_state_field_limit": -1},
        {"min_replicas": -1},
        {"trace_object_key": "secret"},
    ],
)
async def test_option_errors_are_usage_errors_of_the_one_tree(
    client: aioredis.Redis, options: dict[str, object]
) -> None:
    from restate_redis import InvalidOptionError, UsageError

    with pytest.raises(InvalidOptionError) as err:
        RedisStateStore(client, **options)  # type: ignore[arg-type]
    assert isinstance(err.value, UsageError) and isinstance(err.value, StateError)
    assert isinstance(err.value, ValueError) and isinstance(err.value, TypeError)
    with pytest.raises(InvalidOptionError, match="not a Redis URL"):
        RedisStateStore.from_url("localhost:6379")


def test_every_public_error_sits_in_one_group() -> None:
    import restate_redis as rr

    groups = (rr.UsageError, rr.DataError, rr.ConcurrencyError, rr.AvailabilityError)
    errors = [
        getattr(rr, name)
        for name in rr.__all__
        if isinstance(getattr(rr, name), type) and issubclass(getattr(rr, name), rr.StateError)
    ]
    assert len(errors) > 20
    for error in errors:
        if error is rr.StateError or error in groups:
            continue
        assert sum(issubclass(error, g) for g in groups) == 1, error


def test_the_package_ships_its_types() -> None:
    from importlib.resources import files

    assert (files("restate_redis") / "py.typed").is_file()
