"""Export and import of whole objects (``store.export_objects`` / ``store.import_objects``,
``restate-redis export`` / ``import``): lossless across namespaces, servers and a cluster,
idempotent, fenced by the lease, and strict about bad files.

What is compared is what Redis holds: each object's state hash (a hash of its fields and
values, byte for byte), its version, workflow status, expiry, the expiry of each state key
with one of its own, and its stored-size bookkeeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from restate_redis import (
    BytesSerde,
    ImportConflictError,
    ObjectRecord,
    RecordFormatError,
    RedisStateStore,
    ServerFeatureError,
)
from restate_redis.records import read_lines, record_line
from tests.support.clirun import run_cli
from tests.support.keys import meta_of, state_fields
from tests.support.servers import Cluster, Server, running_server, start_cluster
from tests.support.stores import empty_store

RAW = BytesSerde()
N_OBJECTS = 10_000
SERVICES = ["Cart", "Svc{x}:y%", "Ünï ☃"]
KEY_FORMS = ["k{i}", "{{k}}:{i}", "%{i}%2F", "ключ-{i}-☃", "a:b:{i}{{", "*?[{i}]\\"]
TTL_S = 3600
KEY_TTL_MS = 600_000


def odd_key(i: int) -> str:
    return "" if i < len(SERVICES) else KEY_FORMS[i % len(KEY_FORMS)].format(i=i)


def raw_value(i: int) -> bytes:
    """Bytes that are no UTF-8 and hold NULs: only a raw round trip keeps them."""
    return bytes([i % 256, 0, 0xFF, 0xFE, 0xC3, 0x28, 0]) + i.to_bytes(4, "big")


async def populate(store: RedisStateStore, n: int, *, key_ttls: bool) -> dict[str, int]:
    """``n`` objects of odd names, through real sessions, 200 at a time: plain objects, objects
    with a ttl, workflows completed and running, and (``key_ttls``) state keys that expire on
    their own. What was made, counted by kind."""
    made = {"object": 0, "ttl": 0, "completed": 0, "running": 0, "key ttl": 0}
    limit = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        service, key = SERVICES[i % len(SERVICES)], odd_key(i)
        async with limit:
            if i % 50 == 7:
                async with store.workflow("Flow", f"wf:{{{i}}}") as s:
                    s.set("result", raw_value(i), serde=RAW)
                made["completed"] += 1
                return
            if i % 50 == 9:
                async with store.workflow("Flow", f"run-{i}"):
                    pass  # its run session opened: running, no state yet
                made["running"] += 1
                return
            ttl = TTL_S if i % 10 == 3 else None
            async with store.object(service, key, state_preload=False, ttl=ttl) as s:
                s.set("items", ["x", i, {"nested": "ü"}])
                s.set("", raw_value(i), serde=RAW)
                s.set("na:me{}ü", i)
                if key_ttls and i % 10 == 5:
                    s.set("token", raw_value(i), serde=RAW, ttl=KEY_TTL_MS / 1000)
                    made["key ttl"] += 1
            made["ttl" if ttl else "object"] += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return made


async def snapshot(client: Any, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    """What Redis holds per object of ``namespace``, read with plain commands."""
    from restate_redis import Keyspace

    keyspace = Keyspace(namespace)
    metas: list[bytes] = []
    async for key in scan_all(client, keyspace.all_pattern("state")):
        metas.append(key)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    names = sorted({keyspace.parse(k)[:2] for k in metas if keyspace.parse(k)})  # type: ignore[index]
    for start in range(0, len(names), 1000):
        chunk = names[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for service, key in chunk:
            keys = keyspace.object_keys(service, key)
            pipe.hgetall(keys.state)
            pipe.pttl(keys.state)
        replies = await pipe.execute()
        for i, name in enumerate(chunk):
            fields, pttl = replies[2 * i : 2 * i + 2]
            state, meta = state_fields(fields), meta_of(fields)
            v, wf, b, c, t = meta.version, meta.workflow, meta.size, meta.commit, meta.changed_ms
            if not state and wf is None:
                continue  # only bookkeeping: not an object to export
            digest = hashlib.sha256()
            for field in sorted(state):
                digest.update(len(field).to_bytes(4, "big") + field)
                digest.update(len(state[field]).to_bytes(4, "big") + state[field])
            found[name] = {
                "hash": digest.hexdigest(),
                "fields": len(state),
                "version": v,
                "wf": wf,
                "b": b,
                "size": sum(len(f) + len(val) for f, val in state.items()),
                "c": c,
                "t": t,
                "pttl": -1 if meta.fading else pttl,
                "state_pttl": pttl if state else None,
                "timed": sorted(f for f in state if f == b"token"),
            }
    return found


async def scan_all(client: Any, match: str) -> AsyncIterator[bytes]:
    if isinstance(client, aioredis.RedisCluster):
        for node in client.get_primaries():
            async for key in client.scan_iter(match=match, count=1000, target_nodes=node):
                yield key
    else:
        async for key in client.scan_iter(match=match, count=1000):
            yield key


async def key_pttls(client: Any, namespace: str, objects: list[tuple[str, str]]) -> list[int]:
    from restate_redis import Keyspace

    keyspace = Keyspace(namespace)
    pipe = client.pipeline(transaction=False)
    for service, key in objects:
        pipe.execute_command(
            "HPTTL", keyspace.object_keys(service, key).state, "FIELDS", 1, "token"
        )
    return [int(r[0]) for r in await pipe.execute()]


def assert_same_objects(
    source: dict[tuple[str, str], dict[str, Any]],
    target: dict[tuple[str, str], dict[str, Any]],
    *,
    new_commits: bool = True,
) -> None:
    """Byte-identical state, same version, workflow status, time of change; expiries as long
    as the source's at most (they count from the import on) and within a minute of it; the
    stored size counted right; a new last commit id."""
    assert target.keys() == source.keys()
    for name, src in source.items():
        got = target[name]
        for field in ("hash", "fields", "version", "wf", "t", "timed"):
            assert got[field] == src[field], (name, field, src[field], got[field])
        assert int(got["b"]) == got["size"] == src["size"], name
        if src["pttl"] < 0:
            assert got["pttl"] == -1, (name, got["pttl"])
        else:
            assert 0 < src["pttl"] - 60_000 < got["pttl"], (name, src["pttl"], got["pttl"])
            if src["state_pttl"] is not None:  # the state expires with its meta
                assert abs(got["state_pttl"] - got["pttl"]) < 1000, (name, got)
        if new_commits:
            assert got["c"] is not None and got["c"] != src["c"], name


def steady(found: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """What an object holds, less the expiries (they count down)."""
    return {n: {k: v for k, v in o.items() if "pttl" not in k} for n, o in found.items()}


@pytest.fixture(scope="module")
def other_server() -> Iterator[Server]:
    with running_server("valkey") as srv:
        yield srv


async def test_ten_thousand_odd_objects_round_trip_byte_for_byte(
    other_server: Server, tmp_path: Path
) -> None:
    """Library and CLI: export, then import into an empty namespace of the same server and
    into another server; every hash, version, workflow status and expiry the same; a second
    import writes nothing. The throughput is printed, not asserted."""
    with running_server("valkey") as source_server:
        async with (
            empty_store(source_server.url, namespace="src") as src,
            empty_store(other_server.url, namespace="src") as far,
            RedisStateStore.from_url(source_server.url, namespace="copy") as copy,
        ):
            t0 = time.monotonic()
            made = await populate(src, N_OBJECTS, key_ttls=True)
            print(f"\npopulate {time.monotonic() - t0:.1f}s")
            assert min(made.values()) > 0, made
            before = await snapshot(src.client, "src")
            assert len(before) == N_OBJECTS

            started = time.monotonic()
            records = [r async for r in src.export_objects()]
            export_s = time.monotonic() - started
            assert len(records) == N_OBJECTS
            started = time.monotonic()
            report = await copy.import_objects(records)
            import_s = time.monotonic() - started
            assert (report.created, report.total) == (N_OBJECTS, N_OBJECTS)
            assert_same_objects(before, await snapshot(copy.client, "copy"))
            timed = [name for name, obj in before.items() if obj["timed"]]
            assert len(timed) == made["key ttl"]
            for left in await key_pttls(copy.client, "copy", timed):
                assert KEY_TTL_MS - 120_000 < left <= KEY_TTL_MS

            # The CLI, through a file, into another server
            file = tmp_path / "export.jsonl"
            cli_started = time.monotonic()
            out = run_cli(
                "export", "-o", str(file), "--url", source_server.url, "--namespace", "src"
            )
            cli_export_s = time.monotonic() - cli_started
            assert out.returncode == 0, out.stderr
            assert f"exported {N_OBJECTS} objects" in out.stderr
            lines = file.read_text().splitlines()
            assert json.loads(lines[0])["format"] == "restate-redis-export"
            assert len(lines) == N_OBJECTS + 1 and all(line.isascii() for line in lines)
            cli_started = time.monotonic()
            out = run_cli("import", str(file), "--url", other_server.url, "--namespace", "src")
            cli_import_s = time.monotonic() - cli_started
            assert out.returncode == 0, out.stderr
            assert f"imported {N_OBJECTS} objects: {N_OBJECTS} created" in out.stdout
            assert_same_objects(before, await snapshot(far.client, "src"))

            # Idempotent: again, nothing is written (same versions, bytes and commit ids)
            assert (await src.import_objects(records)).unchanged == N_OBJECTS
            assert steady(await snapshot(src.client, "src")) == steady(before)
    print(
        f"\n{N_OBJECTS} objects: library export {N_OBJECTS / export_s:,.0f}/s, "
        f"import {N_OBJECTS / import_s:,.0f}/s; CLI export {N_OBJECTS / cli_export_s:,.0f}/s, "
        f"import {N_OBJECTS / cli_import_s:,.0f}/s (with process start)"
    )


async def test_conflicts_dry_run_and_a_session_fenced_out(store: RedisStateStore) -> None:
    client = store.client
    async with store.object("Cart", "a") as s:
        s.set("n", 1)
    record = await store.export_object("Cart", "a")
    assert record is not None and record.version == 1
    other = ObjectRecord("Cart", "a", {"n": b"\x02", "": b"\xff\x00"}, version=1)

    # fail (the default): nothing written; skip: left; dry run: says, writes nothing
    before = await snapshot(client, "restate")
    with pytest.raises(ImportConflictError, match="'Cart'/'a' already exists"):
        await store.import_object(other)
    assert (await store.import_object(other, on_conflict="skip")).outcome == "skipped"
    dry = await store.import_objects([other], dry_run=True)
    assert (dry.conflict, dry.dry_run) == (1, True)
    dry = await store.import_objects([other], on_conflict="overwrite", dry_run=True)
    assert dry.overwritten == 1
    assert await snapshot(client, "restate") == before

    # A snapshot the store cached (version 1) must not survive an overwrite at version 1
    async with store.object("Cart", "a") as s:
        assert await s.get("n") == 1
    assert (await store.import_object(other, on_conflict="overwrite")).outcome == "overwritten"
    async with store.object("Cart", "a", shared=True) as s:
        assert s.version == 1 and await s.get("n", serde=RAW) == b"\x02"
        assert await s.get("", serde=RAW) == b"\xff\x00"

    # A running session holds the lease: the import waits, then lands after its commit
    async with store.object("Cart", "a") as s:
        task = asyncio.create_task(store.import_object(record, on_conflict="overwrite"))
        await asyncio.sleep(0.3)
        assert not task.done()  # fenced: the lease is held
        s.set("n", 5)
    assert (await task).outcome == "overwritten"
    async with store.object("Cart", "a", shared=True) as s:
        assert (s.version, await s.get_all(serde=RAW)) == (1, {"n": b"\x01"})
    assert not await client.exists(store.keyspace.object_keys("Cart", "a").lease)


async def test_a_key_ttl_needs_a_server_that_keeps_it(
    store: RedisStateStore, server: Server
) -> None:
    record = ObjectRecord("Cart", "t", {"k": b"1"}, key_ttl_ms={"k": 5000})
    if server.flavour == "redis" and not await has_field_expiry(store.client):
        with pytest.raises(ServerFeatureError, match="hash-field expiry"):
            await store.import_object(record)
        assert await store.client.keys("*") == []
    else:
        assert (await store.import_object(record)).outcome == "created"
        assert (await store.export_object("Cart", "t")).key_ttl_ms["k"] > 4000  # type: ignore[union-attr]


async def has_field_expiry(client: Any) -> bool:
    try:
        await client.execute_command("HPTTL", "nothing", "FIELDS", 1, "x")
    except Exception:
        return False
    return True


GOOD = record_line(ObjectRecord("Cart", "a", {"n": b"\x01"}, version=1))
HEADER = '{"format":"restate-redis-export","version":1,"namespace":"restate"}'
BAD_FILES = {
    "no header": ([GOOD], "line 1: not a restate-redis export"),
    "newer format": (['{"format":"restate-redis-export","version":9}'], "line 1: the file is "
                     "format version 9"),
    "bad json": ([HEADER, GOOD, "{nope"], "line 3: not a JSON document"),
    "bad base64": ([HEADER, GOOD, GOOD.replace('"AQ=="', '"%%"')], "line 3: the value of state "
                   "key 'n' is not base64"),
    "unknown field": ([HEADER, GOOD.replace('"key"', '"kee"')], "line 2: unknown field 'kee'"),
    "bad status": ([HEADER, GOOD.replace('"workflow":null', '"workflow":"done"')], "line 2: "
                   "'Cart'/'a': workflow status"),
    "twice a name": ([HEADER, GOOD.replace('"key":"a"', '"key":"a","key":"b"')], "line 2: not a "
                     "JSON document: the name 'key' appears twice"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_line_is_named_by_its_number(case: str) -> None:
    lines, message = BAD_FILES[case]
    with pytest.raises(RecordFormatError) as caught:
        list(read_lines(lines))
    assert str(caught.value).startswith(message)


def test_a_bad_file_is_refused_by_line_and_nothing_is_written(
    other_server: Server, tmp_path: Path
) -> None:
    import redis

    rc = redis.Redis.from_url(other_server.url)
    rc.flushall()
    for case in ("no header", "bad base64"):  # line 2 of the second is good: not written
        lines, message = BAD_FILES[case]
        file = tmp_path / "bad.jsonl"
        file.write_text("\n".join(lines) + "\n")
        out = run_cli("import", str(file), "--url", other_server.url)
        assert out.returncode == 5, (case, out.stderr)
        assert message in out.stderr and "nothing was written" in out.stderr, (case, out.stderr)
        assert rc.keys("*") == [], case
    rc.close()
    out = run_cli("export", "Cart", "--url", other_server.url)
    assert out.returncode == 2 and "missing -o FILE" in out.stderr


def test_cli_conflict_and_dry_run_exit_codes(other_server: Server, tmp_path: Path) -> None:
    import redis

    server = other_server
    rc = redis.Redis.from_url(server.url)
    rc.flushall()
    file = tmp_path / "one.jsonl"
    header = '{"format":"restate-redis-export","version":1,"namespace":"restate"}'
    file.write_text(
        header + "\n" + record_line(ObjectRecord("Cart", "a", {"n": b"\x01"}, 2)) + "\n"
    )
    assert run_cli("import", str(file), "--url", server.url).returncode == 0
    state = rc.hgetall("restate:{Cart:a}:state")
    out = run_cli("import", str(file), "--url", server.url)  # again: nothing written
    assert out.returncode == 0 and "1 unchanged" in out.stdout, out
    assert rc.hgetall("restate:{Cart:a}:state") == state  # the bookkeeping too
    file.write_text(
        header + "\n" + record_line(ObjectRecord("Cart", "a", {"n": b"\x02"}, 2)) + "\n"
    )
    state = rc.hgetall("restate:{Cart:a}:state")
    out = run_cli("import", str(file), "--url", server.url, "--dry-run")
    assert out.returncode == 3 and "1 in conflict" in out.stdout, out
    out = run_cli("import", str(file), "--url", server.url)
    assert out.returncode == 3 and "'Cart'/'a' already exists" in out.stderr, out
    out = run_cli("import", str(file), "--url", server.url, "--on-conflict", "skip")
    assert out.returncode == 0 and "1 skipped" in out.stdout, out
    assert rc.hgetall("restate:{Cart:a}:state") == state
    out = run_cli("import", str(file), "--url", server.url, "--on-conflict", "overwrite")
    assert out.returncode == 0 and "1 overwritten" in out.stdout, out
    assert state_fields(rc.hgetall("restate:{Cart:a}:state")) == {b"n": b"\x02"}
    rc.close()


# -- on a cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = start_cluster(3)
    yield c
    c.stop()


async def test_export_covers_every_master_of_a_cluster(cluster: Cluster) -> None:
    async with (
        empty_store(cluster.url, namespace="src", acquire_timeout=10) as src,
        RedisStateStore.from_url(cluster.url, namespace="copy") as copy,
    ):
        await populate(src, 300, key_ttls=False)
        before = await snapshot(src.client, "src")
        nodes = {
            src.client.get_node_from_key(src.keyspace.object_keys(*name).state).name
            for name in before
        }
        assert len(before) == 300 and len(nodes) == 3
        export = src.export_objects()
        report = await copy.import_objects(export)
        assert report.created == 300 and export.exported == 300
        assert_same_objects(before, await snapshot(copy.client, "copy"))


def test_cli_export_with_history_and_import_keep_the_entries(
    other_server: Server, tmp_path: Path
) -> None:
    import redis

    rc = redis.Redis.from_url(other_server.url)
    rc.flushall()

    async def commits() -> None:
        async with RedisStateStore.from_url(other_server.url, history=True) as store:
            for n in range(3):
                async with store.object("Cart", "h") as s:
                    s.set("n", n)

    asyncio.run(commits())
    file = tmp_path / "h.jsonl"
    out = run_cli("export", "--history", "-o", str(file), "--url", other_server.url)
    assert out.returncode == 0, out.stderr
    (record,) = [r for _, r in read_lines(file.read_text().splitlines())]
    assert [fields["v"] for _, fields in record.history] == [b"1", b"2", b"3"]
    out = run_cli("import", str(file), "--url", other_server.url, "--namespace", "copy")
    assert out.returncode == 0, out.stderr
    assert rc.xrange("copy:{Cart:h}:history") == rc.xrange("restate:{Cart:h}:history")
    out = run_cli("export", "--history", "--to-restate", "http://127.0.0.1:1", "--url",
                  other_server.url)  # fmt: skip
    assert out.returncode == 2 and "--history goes with -o FILE" in out.stderr, out.stderr
    rc.close()
