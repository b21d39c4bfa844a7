"""Size reports: Admin.usage and ``restate-redis du`` from the bookkeeping, on one server and
on a cluster; listings that cover every master of a cluster."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from restate_redis import RedisStateStore
from restate_redis.backend.inventory import ServiceInfo
from restate_redis.keyspace import META_FIELD
from restate_redis.tools.admin import Admin
from tests.support.bookkeeping import packed_meta
from tests.support.clirun import run_cli
from tests.support.keys import state_fields
from tests.support.servers import Cluster, Server, start_cluster
from tests.support.stores import empty_store

# Commands that read values of a state hash; a size report sends none of them.
VALUE_READS = ("hget", "hgetall", "hmget", "hvals", "hscan", "hstrlen", "evalsha", "eval")


async def put(store: RedisStateStore, service: str, key: str, **values: object) -> None:
    async with store.object(service, key) as s:
        for name, value in values.items():
            s.set(name, value)


async def stored_bytes(client: Any, store: RedisStateStore, service: str, key: str) -> int:
    """What the state hash holds, counted here from its state keys: names and values."""
    raw: dict[bytes, bytes] = await client.hgetall(store.keyspace.object_keys(service, key).state)
    return sum(len(name) + len(value) for name, value in state_fields(raw).items())


async def command_calls(client: aioredis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_usage_counts_bytes_and_keys_without_reading_a_value(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    for i in range(12):
        await put(store, "Cart", f"c{i:02d}", items=["x" * (40 * i)], n=i)
    await put(store, "Cart", "c03", extra={"a": 1})  # a second commit grows it
    await put(store, "Visits", "home", n=1)
    async with store.workflow("Signup", "wf-1") as wf:
        wf.set("step", "mailed")
    expected = {
        "Cart": sorted(
            [
                (await stored_bytes(client, store, "Cart", f"c{i:02d}"), f"c{i:02d}")
                for i in range(12)
            ],
            reverse=True,
        ),
        "Visits": [(await stored_bytes(client, store, "Visits", "home"), "home")],
        "Signup": [(await stored_bytes(client, store, "Signup", "wf-1"), "wf-1")],
    }
    await client.config_resetstat()
    found = await Admin(store).usage(top=5)
    calls = await command_calls(client)
    assert not {name: calls[name] for name in VALUE_READS if name in calls and name != "hget"}
    assert calls["hget"] == 14  # one per object, of its bookkeeping field: v, b, t, flags
    assert found.complete and found.skipped.count == 0 and found.unsized == []
    assert [info.name for info in found.services] == ["Cart", "Signup", "Visits"]
    cart = found.services[0]
    assert (cart.objects, cart.keys) == (12, 25)
    assert cart.bytes == sum(size for size, _ in expected["Cart"])
    assert found.services[1] == ServiceInfo("Signup", 1, 1, expected["Signup"][0][0], eager=1)
    assert [(o.size, o.key) for o in found.largest] == expected["Cart"][:5]
    assert [o.keys for o in found.largest] == [2, 2, 2, 2, 2]
    assert all(o.changed_ms is not None and o.version == 1 for o in found.largest)
    c03 = await Admin(store).usage(["Cart"], top=20)
    assert [o.version for o in c03.largest if o.key == "c03"] == [2]
    only = await Admin(store).usage(["Visits", "Signup"], top=1)
    assert [info.name for info in only.services] == ["Signup", "Visits"]
    assert [o.key for o in only.largest] == [
        "wf-1" if expected["Signup"] > expected["Visits"] else "home"
    ]


async def test_a_size_written_by_another_tool_is_unknown_until_an_eager_open_counts_it(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    await put(store, "Cart", "ours", n=1)
    keys = store.keyspace.object_keys("Cart", "theirs")
    await client.hset(keys.state, mapping={"a": "1", "b": "22", "c": "333"})
    await client.hset(keys.state, META_FIELD, packed_meta(4))  # bookkeeping without a size
    found = await Admin(store).usage(top=5)
    (cart,) = found.services
    assert (cart.objects, cart.keys, cart.unsized) == (2, 4, 1)
    assert cart.bytes == await stored_bytes(client, store, "Cart", "ours")  # never 0 for it
    assert [(o.key, o.size, o.keys, o.version) for o in found.unsized] == [("theirs", None, 3, 4)]
    assert [o.key for o in found.largest] == ["ours"]
    assert found.unsized[0].fit(1000, 10) == "unknown"
    async with store.object("Cart", "theirs", shared=True) as s:  # eager: counts and keeps it
        assert await s.state_keys() == ["a", "b", "c"]
    again = await Admin(store).usage(top=5)
    assert again.unsized == [] and again.services[0].unsized == 0
    assert [(o.key, o.size) for o in again.largest if o.key == "theirs"] == [("theirs", 9)]


async def test_objects_at_or_near_an_eager_limit_are_flagged_as_sessions_find_them(
    client: aioredis.Redis,
) -> None:
    async with RedisStateStore(
        client, eager_state_size_limit=1000, eager_state_field_limit=10
    ) as store:
        await put(store, "S", "many", **{f"k{i}": i for i in range(11)})  # 11 > 10 keys
        await put(store, "S", "nine", **{f"k{i}": i for i in range(9)})  # 9 >= 90% of 10
        await put(store, "S", "big", v="x" * 1000)  # over 1000 bytes
        await put(store, "S", "close", v="x" * 920)  # over 900 bytes
        await put(store, "S", "small", v="x")
        found = await Admin(store).usage(top=10)
        fits = {o.key: o.fit(1000, 10) for o in found.largest}
        assert fits == {
            "many": "lazy",
            "nine": "near",
            "big": "lazy",
            "close": "near",
            "small": "eager",
        }
        assert (found.services[0].lazy, found.services[0].near) == (2, 2)
        for key, fit in fits.items():
            async with store.object("S", key, shared=True) as s:
                await s.state_keys()
                assert (s.mode == "lazy") == (fit == "lazy"), key


async def test_a_sweep_stops_at_max_objects_and_says_so(store: RedisStateStore) -> None:
    for i in range(30):
        await put(store, "Many", f"m{i}", n=i)
    part = await Admin(store).usage(max_objects=10)
    assert not part.complete and part.services[0].objects == 10
    whole = await Admin(store).usage(max_objects=30)
    assert whole.complete and whole.services[0].objects == 30


# -- the command ---------------------------------------------------------------------------------


def du(server_url: str, *args: str) -> Any:
    proc = run_cli("du", "--url", server_url, *args)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc


@pytest.mark.parametrize("server", ["valkey"], indirect=True)
async def test_du_plain_json_and_table(
    store: RedisStateStore, client: aioredis.Redis, server: Server
) -> None:
    await put(store, "Cart", "alice", items=["x" * 500])
    await put(store, "Cart", "bob", items=["x" * 50])
    await put(store, "Ev\x1b[31mil", "k", n=1)
    ext = store.keyspace.object_keys("Cart", "ext").state
    await client.hset(ext, mapping={"a": "1", META_FIELD: packed_meta(1)})  # no size
    doc = json.loads(du(server.url, "--plain", "--top", "1", "--eager-size-limit", "560").stdout)
    assert doc["limits"] == {"eager_state_size_limit": 560, "eager_state_field_limit": 20000}
    alice = await stored_bytes(client, store, "Cart", "alice")
    bob = await stored_bytes(client, store, "Cart", "bob")
    cart = {"objects": 3, "keys": 3, "bytes": alice + bob, "unsized": 1, "lazy": 0, "near": 1}
    assert doc["services"][0] == {"name": "Cart", **cart}
    assert doc["services"][1]["name"] == "Ev\x1b[31mil"
    assert doc["total"]["objects"] == 4
    (largest,) = doc["largest"]
    assert (largest["key"], largest["bytes"], largest["load"]) == ("alice", alice, "near")
    assert isinstance(largest["changed_ms"], int) and largest["version"] == 1
    assert [(o["key"], o["bytes"], o["load"]) for o in doc["unsized"]] == [("ext", None, "unknown")]

    table = du(server.url, "Cart", "Nobody", "--eager-size-limit", "500")
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in table.stdout.splitlines()
        if line.startswith("│")
    ]
    assert rows[:3] == [
        ["Cart", "3", "3", f"≥ {alice + bob} B", "1", "1", ""],  # only the services asked for
        ["Nobody", "0", "0", "0 B", "", "", ""],
        ["total", "3", "3", f"≥ {alice + bob} B", "1", "1", ""],
    ]
    assert rows[3][:5] == ["Cart", "alice", f"{alice} B", "1", "1"]
    assert rows[3][6] == "loads lazily"
    assert rows[4][:3] == ["Cart", "bob", f"{bob} B"] and rows[4][6] == ""
    assert rows[5][:6] == ["Cart", "ext", "unknown", "1", "1", "-"]
    assert "nothing is stored for service 'Nobody'" in table.stderr
    everything = du(server.url)
    assert "Ev\\x1b[31mil" in everything.stdout and "\x1b" not in everything.stdout


def test_du_errors_are_one_line() -> None:
    proc = run_cli("du", "--url", "redis://127.0.0.1:1/0", "--plain")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("restate-redis: error: ") and len(proc.stderr.splitlines()) == 1
    assert run_cli("du", "--top", "x").returncode == 2
    bad = run_cli("du", "--url", "redis://127.0.0.1:1/0", "bad{name}", "--eager-field-limit", "0")
    assert bad.returncode == 2 and "--eager-field-limit" in bad.stderr


# -- on a cluster ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = start_cluster(3)
    yield c
    c.stop()


@pytest.fixture
async def cstore(cluster: Cluster) -> AsyncIterator[RedisStateStore]:
    async with empty_store(cluster.url, acquire_timeout=10) as store:
        yield store


async def test_listings_and_usage_cover_every_master_of_a_cluster(
    cluster: Cluster, cstore: RedisStateStore
) -> None:
    keys = [f"obj-{i:02d}" for i in range(60)]
    for i, key in enumerate(keys):
        await put(cstore, "Cart", key, n="x" * i)
    await put(cstore, "Other", "x", n=1)
    nodes = {
        cstore.client.get_node_from_key(cstore.keyspace.object_keys("Cart", k).state).name
        for k in keys
    }
    assert len(nodes) == len(cluster.masters) == 3
    admin = Admin(cstore)
    listed: list[str] = []
    cursor, pages = 0, 0
    while True:  # bounded: each page holds at least 7 objects until the listing ends
        page = await admin.list_objects("Cart", cursor=cursor, limit=7)
        listed += [o.key for o in page.objects]
        cursor, pages = page.cursor, pages + 1
        assert pages <= 20
        if cursor == 0:
            break
    assert sorted(set(listed)) == keys and pages >= len(cluster.masters)
    assert sorted([k async for k in admin.iter_objects("Cart", prefix="obj-0")]) == keys[:10]
    found = await admin.usage(top=3)
    assert [(s.name, s.objects, s.keys) for s in found.services] == [
        ("Cart", 60, 60),
        ("Other", 1, 1),
    ]
    sizes = [await stored_bytes(cstore.client, cstore, "Cart", key) for key in keys]
    assert found.services[0].bytes == sum(sizes)
    assert [o.key for o in found.largest] == ["obj-59", "obj-58", "obj-57"]
    services = await admin.services()
    assert [(s.name, s.objects) for s in services] == [("Cart", 60), ("Other", 1)]

    doc = json.loads(du(cluster.url, "--plain", "--top", "2").stdout)
    assert [(s["name"], s["objects"]) for s in doc["services"]] == [("Cart", 60), ("Other", 1)]
    assert [o["key"] for o in doc["largest"]] == ["obj-59", "obj-58"]
    listed_cli = run_cli("kv", "list", "Cart", "--plain", "--url", cluster.url)
    assert sorted(listed_cli.stdout.split()) == keys, listed_cli.stderr
