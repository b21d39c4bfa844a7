"""History (opt-in): one entry per applied commit in the commit's own script, trimming, the
entries' contents, restore / undo rebuilt from them, and watch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgpack
import pytest
import redis.asyncio as aioredis

from restate_redis import (
    ABSENT,
    NOT_KEPT,
    History,
    HistoryEntry,
    HistoryNotKeptError,
    InvalidOptionError,
    LeaseLostError,
    ObjectRecord,
    RecordFormatError,
    RedisStateStore,
)
from restate_redis.errors import UnknownObjectError
from restate_redis.keyspace import META_FIELD, Meta, commit_tag
from restate_redis.records import check_record, header_line, read_lines, record_line
from tests.support.keys import read_state
from tests.support.servers import Server


@pytest.fixture
async def hstore(client: aioredis.Redis) -> AsyncIterator[RedisStateStore]:
    s = RedisStateStore(client, lease_ttl=5, acquire_timeout=10, history=True)
    yield s
    await s.aclose()


def packed(value: object) -> bytes:
    out: bytes = msgpack.packb(value)
    return out


async def state_in_redis(store: RedisStateStore, service: str, key: str) -> dict[bytes, bytes]:
    return await read_state(store.client, store.keyspace.object_keys(service, key).state)


async def put(store: RedisStateStore, key: str, **values: object) -> None:
    async with store.object("Cart", key) as s:
        for name, value in values.items():
            if value is ABSENT:
                s.clear(name)
            else:
                s.set(name, value)


async def test_one_entry_per_applied_commit_none_for_a_replay_or_a_refusal(
    hstore: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = hstore.keyspace.object_keys("Cart", "a")
    for attempt in range(2):  # the same commit id again: recognised, not applied, no entry
        async with hstore.object("Cart", "a", commit_id="inv-1") as s:
            s.set("items", ["apple"])
        assert s.replayed == (attempt == 1)
    assert await client.xlen(keys.history) == 1
    # a commit whose lease ran out is refused: nothing written, no entry
    stalled = hstore.object("Cart", "a")
    await stalled.__aenter__()
    stalled.set("items", ["stale"])
    await client.set(keys.lease, "someone-else")
    with pytest.raises(LeaseLostError):
        await stalled.__aexit__(None, None, None)
    await client.delete(keys.lease)
    assert await client.xlen(keys.history) == 1
    async with hstore.object("Cart", "a") as s:
        s.set("items", ["apple", "pear"])
        s.clear("nothing-there")
    # what the stream holds, field by field (the layout of history.lua)
    rows = await client.xrange(keys.history)
    assert [r[1][b"v"] for r in rows] == [b"1", b"2"]
    first, second = rows[0][1], rows[1][1]
    assert first[b"o"] == b"session" and first[b"c"] == b"inv-1" and first[b"x"] == b"n"
    new = packed(["apple"])
    assert first[b"d"] == b"5:items-+0:%d:" % len(new) + new
    assert second[b"x"] == b""  # the store made up its commit id: not the caller's
    meta = Meta.parse(await client.hget(keys.state, META_FIELD))
    assert meta.commit == commit_tag(second[b"c"].decode())
    entries = await hstore.history("Cart", "a")
    assert [(e.version, e.commit_id, e.origin) for e in entries] == [
        (1, "inv-1", "session"),
        (2, None, "session"),
    ]
    assert entries[1].changes["items"].old == ["apple"]
    assert entries[1].changes["items"].new == ["apple", "pear"]
    assert entries[1].changes["nothing-there"].old is ABSENT
    assert entries[1].changes["nothing-there"].new is ABSENT
    assert entries[0].at <= entries[1].at <= datetime.now(UTC) + timedelta(seconds=5)
    assert entries[0].at.tzinfo is UTC


async def test_history_off_by_default_writes_no_key(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    async with store.object("Cart", "a", commit_id="x") as s:
        s.set("n", 1)
    async with store.object("Cart", "a") as s:
        s.clear_all()
        s.set("m", 2)
    keys = store.keyspace.object_keys("Cart", "a")
    assert await client.exists(keys.history) == 0
    assert [k async for k in client.scan_iter("*history*")] == []
    assert await store.history("Cart", "a") == []  # readable: nothing kept


async def test_services_limit_and_origins(client: aioredis.Redis) -> None:
    async with RedisStateStore(client, history=History(services=["Cart"])) as store:
        async with store.object("Cart", "a", origin="cli") as s:
            s.set("n", 1)
        async with store.object("Other", "a") as s:
            s.set("n", 1)
        async with store.workflow("Cart", "wf", origin="import") as s:
            s.set("n", 1)
        assert [e.origin for e in await store.history("Cart", "a")] == ["cli"]
        assert [e.origin for e in await store.history("Cart", "wf")] == ["import"]
        assert await client.exists(store.keyspace.object_keys("Other", "a").history) == 0
        with pytest.raises(InvalidOptionError, match="origin must be one of"):
            store.object("Cart", "a", origin="robot")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="max_versions"):
        History(max_versions=0)
    with pytest.raises(InvalidOptionError, match="history must be"):
        RedisStateStore(client, history="yes")  # type: ignore[arg-type]


async def test_trimmed_by_count_and_by_age(client: aioredis.Redis) -> None:
    async with RedisStateStore(client, history=History(max_versions=10)) as store:
        for i in range(300):
            await put(store, "n", n=i)
        stream = store.keyspace.object_keys("Cart", "n").history
        kept = await client.xlen(stream)
        # whole nodes of the stream go (at most 100 entries each): at least 10 stay
        assert 10 <= kept <= 110, kept
        entries = await store.history("Cart", "n")
        assert entries[-1].version == 300
        assert [e.version for e in entries] == list(range(301 - kept, 301))
        with pytest.raises(HistoryNotKeptError, match="reaches back to version") as caught:
            await store.restore("Cart", "n", version=1)
        assert caught.value.earliest_version == 300 - kept
    async with RedisStateStore(client, history=History(max_age=0.05)) as store:
        for i in range(150):
            await put(store, "age", n=i)
        await asyncio.sleep(0.2)  # so that the first 150 entries are older than max_age
        await put(store, "age", n=150)
        entries = await store.history("Cart", "age")
        assert entries[0].version > 1 and entries[-1].version == 151
        assert len(entries) < 151


async def test_an_entry_over_max_entry_bytes_keeps_the_names_only(client: aioredis.Redis) -> None:
    async with RedisStateStore(client, history=History(max_entry_bytes=200)) as store:
        await put(store, "big", small=1)
        await put(store, "big", large="x" * 300, small=2)
        await put(store, "big", small=3)
        entries = await store.history("Cart", "big")
        assert [e.values_kept for e in entries] == [True, False, True]
        big = entries[1]
        assert set(big.changes) == {"large", "small"}
        assert big.changes["large"].new is NOT_KEPT and big.changes["small"].old is NOT_KEPT
        await store.restore("Cart", "big", version=2)  # back to just after it: fine
        with pytest.raises(HistoryNotKeptError, match="reaches back to version 2") as caught:
            await store.restore("Cart", "big", version=1)
        assert caught.value.earliest_version == 2
        # a clear_all over the limit: its prior values are not copied at all
        await put(store, "wide", **{f"k{i}": "v" * 50 for i in range(10)})
        async with store.object("Cart", "wide") as s:
            s.clear_all()
        last = (await store.history("Cart", "wide"))[-1]
        assert last.cleared_all and not last.values_kept and len(last.changes) == 10


async def test_restore_and_undo_write_the_past_state(
    hstore: RedisStateStore, client: aioredis.Redis
) -> None:
    await put(hstore, "c", items=["a"], total=1)  # v1
    await put(hstore, "c", items=["a", "b"], total=ABSENT, note="x")  # v2
    async with hstore.object("Cart", "c") as s:  # v3: a clear_all, then a set
        s.clear_all()
        s.set("order", "o-1")
    v3_state = await state_in_redis(hstore, "Cart", "c")
    assert await hstore.restore("Cart", "c", version=1) == 4  # back past the clear_all
    assert await state_in_redis(hstore, "Cart", "c") == {
        b"items": packed(["a"]),
        b"total": packed(1),
    }
    assert await hstore.restore("Cart", "c", version=2) == 5
    assert await state_in_redis(hstore, "Cart", "c") == {
        b"items": packed(["a", "b"]),
        b"note": packed("x"),
    }
    assert await hstore.undo("Cart", "c") == 6  # the restore undone: version 4's state again
    assert await state_in_redis(hstore, "Cart", "c") == {
        b"items": packed(["a"]),
        b"total": packed(1),
    }
    assert await hstore.restore("Cart", "c", version=3) == 7
    assert await state_in_redis(hstore, "Cart", "c") == v3_state
    assert await hstore.restore("Cart", "c", version=0) == 8  # before the first commit
    assert await state_in_redis(hstore, "Cart", "c") == {}
    entries = await hstore.history("Cart", "c")
    assert [e.origin for e in entries] == ["session"] * 3 + ["restore"] * 5
    assert await hstore.restore("Cart", "c", version=8) == 8  # nothing differs: no commit
    with pytest.raises(InvalidOptionError, match="it is at version 8"):
        await hstore.restore("Cart", "c", version=9)
    with pytest.raises(InvalidOptionError, match="exactly one"):
        await hstore.restore("Cart", "c")


async def test_restore_at_a_time(hstore: RedisStateStore) -> None:
    await put(hstore, "t", n=1)
    await asyncio.sleep(0.01)  # a later millisecond of the server's clock
    await put(hstore, "t", n=2)
    entries = await hstore.history("Cart", "t")
    await put(hstore, "t", n=3)
    assert await hstore.restore("Cart", "t", at=entries[0].at) == 4
    async with hstore.object("Cart", "t", shared=True) as s:
        assert await s.get("n") == 1
    assert await hstore.restore("Cart", "t", at=entries[0].at - timedelta(seconds=1)) == 5
    async with hstore.object("Cart", "t", shared=True) as s:
        assert await s.state_keys() == []  # before the first commit: nothing
    with pytest.raises(InvalidOptionError, match="timezone-aware"):
        await hstore.restore("Cart", "t", at=datetime.now())


async def test_a_commit_without_history_stops_a_restore(
    hstore: RedisStateStore, client: aioredis.Redis
) -> None:
    await put(hstore, "g", n=1)
    await put(hstore, "g", n=2)
    async with RedisStateStore(client) as plain:  # history off: the commit makes no entry
        await put(plain, "g", n=3)
    with pytest.raises(HistoryNotKeptError, match="no history kept for its last commit"):
        await hstore.undo("Cart", "g")
    async with hstore.object("Cart", "g", shared=True) as s:
        assert await s.get("n") == 3  # nothing written
    await put(hstore, "g", n=4)
    await hstore.undo("Cart", "g")  # back to 3: the run of entries reaches that far
    with pytest.raises(HistoryNotKeptError, match="reaches back to version 3"):
        await hstore.restore("Cart", "g", version=2)
    with pytest.raises(UnknownObjectError, match="no commit to undo"):
        await hstore.undo("Cart", "never")


async def test_restore_waits_for_a_running_session(hstore: RedisStateStore) -> None:
    await put(hstore, "r", n=1)  # v1
    await put(hstore, "r", n=2)  # v2
    holder = hstore.object("Cart", "r")
    await holder.__aenter__()  # a handler holds the object
    holder.set("n", 3)
    holder.set("extra", True)
    restoring = asyncio.create_task(hstore.restore("Cart", "r", version=1))
    await asyncio.sleep(0.2)
    assert not restoring.done()  # it waits for the lease
    await holder.__aexit__(None, None, None)  # v3
    assert await asyncio.wait_for(restoring, 10) == 4
    assert await state_in_redis(hstore, "Cart", "r") == {b"n": packed(1)}
    entries = await hstore.history("Cart", "r")
    assert [(e.version, e.origin) for e in entries][-2:] == [(3, "session"), (4, "restore")]
    assert entries[-1].changes["extra"].old is True and entries[-1].changes["extra"].new is ABSENT


async def test_history_pages(hstore: RedisStateStore) -> None:
    for i in range(5):
        await put(hstore, "p", n=i)
    assert [e.version for e in await hstore.history("Cart", "p", since_version=2)] == [3, 4, 5]
    assert [e.version for e in await hstore.history("Cart", "p", since_version=1, limit=2)] == [
        2,
        3,
    ]
    assert [e.version for e in await hstore.history("Cart", "p", limit=2)] == [4, 5]
    with pytest.raises(InvalidOptionError):
        await hstore.history("Cart", "p", limit=0)


async def test_the_log_expires_with_the_object(
    hstore: RedisStateStore, client: aioredis.Redis
) -> None:
    async with hstore.object("Cart", "ttl", ttl=100) as s:
        s.set("n", 1)
    keys = hstore.keyspace.object_keys("Cart", "ttl")
    assert 0 < await client.pttl(keys.history) <= 100_000
    async with hstore.workflow("Signup", "w", retention=50) as s:
        s.set("step", "done")
    wf = hstore.keyspace.object_keys("Signup", "w")
    assert 0 < await client.pttl(wf.history) <= 50_000
    await put(hstore, "gone", n=1)
    await put(hstore, "gone", n=ABSENT)  # emptied: the bookkeeping's grace period
    gone = hstore.keyspace.object_keys("Cart", "gone")
    left, meta_left = await client.pttl(gone.history), await client.pttl(gone.state)
    assert 0 < left <= meta_left + 1000  # the same expiry as the bookkeeping (one, then other)
    await put(hstore, "gone", n=2)  # state again: kept as long as the state
    assert await client.pttl(gone.history) == -1
    assert await hstore.purge("Cart", "gone")
    assert await client.exists(gone.history) == 0  # purged with the rest


async def test_watch_resumes_without_losing_or_repeating(
    hstore: RedisStateStore, client: aioredis.Redis
) -> None:
    for i in range(3):
        await put(hstore, "w", n=i)
    seen: list[HistoryEntry] = []

    async def watch_until(version: int, since: int | None) -> None:
        async for entry in hstore.watch("Cart", "w", since_version=since):
            seen.append(entry)
            if entry.version >= version:
                return

    task = asyncio.create_task(watch_until(5, 1))  # backlog 2, 3, then 4, 5 as they land
    await asyncio.sleep(0.1)
    await put(hstore, "w", n=3)
    # a dropped connection in the middle of the blocking read: the read goes on after it
    await client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await put(hstore, "w", n=4)
    await asyncio.wait_for(task, 20)
    assert [e.version for e in seen] == [2, 3, 4, 5]
    assert seen[-1].changes["n"].old == 3 and seen[-1].changes["n"].new == 4
    await put(hstore, "w", n=5)
    await put(hstore, "w", n=6)
    await asyncio.wait_for(watch_until(7, seen[-1].version), 20)  # resumed after 5
    assert [e.version for e in seen] == [2, 3, 4, 5, 6, 7]


async def test_watch_many(hstore: RedisStateStore) -> None:
    await put(hstore, "m1", n=0)
    got: list[tuple[str, int]] = []

    async def watch() -> None:
        async for entry in hstore.watch_many([("Cart", "m1"), ("Cart", "m2")]):
            got.append((entry.key, entry.version))
            if len(got) == 3:
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.1)
    await put(hstore, "m2", n=1)
    await put(hstore, "m1", n=1)
    await put(hstore, "m2", n=2)
    await asyncio.wait_for(task, 20)
    assert got == [("m2", 1), ("m1", 2), ("m2", 2)]


async def test_watch_latency(server: Server) -> None:
    """Commit to watch event on a real server: measured and printed, not asserted."""
    async with RedisStateStore.from_url(server.url, history=True) as store:
        await store.client.flushall()
        times: dict[int, float] = {}
        lags: list[float] = []

        async def watch(n: int) -> None:
            async for entry in store.watch("Cart", "lat"):
                lags.append(time.perf_counter() - times[entry.version])
                if len(lags) == n:
                    return

        task = asyncio.create_task(watch(200))
        await asyncio.sleep(0.1)
        for i in range(200):
            async with store.object("Cart", "lat") as s:
                s.set("n", i)
                times[i + 1] = time.perf_counter()  # the commit is sent when the block ends
            await asyncio.sleep(0.002)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 30)
        lags.sort()
        p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99) - 1]
        print(f"\nwatch latency commit->event: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")
        assert len(lags) == 200


async def test_an_import_is_an_entry_and_can_be_undone(
    hstore: RedisStateStore, client: aioredis.Redis
) -> None:
    """An import that overwrites an object adds one entry of origin "import", with every prior
    key (as a clear_all does), in the same script; undo puts the state before it back."""
    await put(hstore, "imp", items=["a"], total=1)  # v1
    await put(hstore, "imp", total=2)  # v2
    before = await state_in_redis(hstore, "Cart", "imp")
    record = ObjectRecord("Cart", "imp", {"items": packed(["z"]), "note": packed("n")}, 2)
    imported = await hstore.import_object(record, on_conflict="overwrite")
    assert imported.outcome == "overwritten"
    entries = await hstore.history("Cart", "imp")
    assert [(e.version, e.origin) for e in entries] == [
        (1, "session"),
        (2, "session"),
        (2, "import"),
    ]
    last = entries[-1]
    assert last.cleared_all
    assert {n: (c.old, c.new) for n, c in last.changes.items()} == {
        "items": (["a"], ["z"]),
        "total": (2, ABSENT),
        "note": (ABSENT, "n"),
    }
    assert last.prior_version == 2  # the import kept its record's version
    assert await state_in_redis(hstore, "Cart", "imp") == {
        k.encode(): v for k, v in record.state.items()
    }
    assert await hstore.undo("Cart", "imp") == 3  # the state before the import, as version 3
    assert await state_in_redis(hstore, "Cart", "imp") == before
    assert await hstore.restore("Cart", "imp", version=1) == 4  # back past the import
    assert await state_in_redis(hstore, "Cart", "imp") == {
        b"items": packed(["a"]),
        b"total": packed(1),
    }
    # a store without history: the import adds an entry only to a log that exists
    plain = RedisStateStore(client)
    try:
        await plain.import_object(ObjectRecord("Cart", "new", {"n": packed(1)}, 1))
        assert not await client.exists(hstore.keyspace.object_keys("Cart", "new").history)
        await plain.import_object(
            ObjectRecord("Cart", "imp", {"n": packed(1)}, 9), on_conflict="overwrite"
        )
        assert (await hstore.history("Cart", "imp"))[-1].origin == "import"
    finally:
        await plain.aclose()
    assert before != record.state


async def test_an_export_with_history_imports_it_entry_for_entry(
    hstore: RedisStateStore, client: aioredis.Redis
) -> None:
    """export_objects(history=True) carries the entries as stored; an import replaces the
    target's history with them (same ids, same fields, no entry of its own), in the same
    script as the state, so the imported object can be restored as the original could."""
    await put(hstore, "h", items=["a"], total=1)
    await put(hstore, "h", total=2)
    async with hstore.object("Cart", "h") as s:
        s.clear_all()
        s.set("note", "n")
    record = await hstore.export_object("Cart", "h", history=True)
    assert record is not None and len(record.history) == 3
    assert (await hstore.export_object("Cart", "h")).history == ()  # type: ignore[union-attr]
    # through the file format and back
    line = record_line(record)
    again = next(read_lines([header_line("restate", 0, None), line]))[1]
    assert again == record

    target = RedisStateStore(client, namespace="copy", history=True)
    try:
        assert (await target.import_object(again)).outcome == "created"
        src = hstore.keyspace.object_keys("Cart", "h").history
        dst = target.keyspace.object_keys("Cart", "h").history
        assert await client.xrange(dst) == await client.xrange(src)
        assert [e.version for e in await target.history("Cart", "h")] == [1, 2, 3]
        assert await target.restore("Cart", "h", version=1) == 4
        async with target.object("Cart", "h", shared=True) as s:
            assert await s.get_all() == {"items": ["a"], "total": 1}
    finally:
        await target.aclose()


def test_a_record_with_history_out_of_order_is_refused() -> None:
    rows = (("2-0", {"v": b"1"}), ("1-0", {"v": b"2"}))
    with pytest.raises(RecordFormatError, match="increasing order"):
        check_record(ObjectRecord("Cart", "x", {}, 2, history=rows))
