"""The store's command path (wire.py): same results as redis-py's own, commands of concurrent
sessions written together on the store's link, and a link that fails safely. Each test runs
with redis-py's hiredis parser (the link then parses replies as the socket delivers them) and
with its Python parser (the link then reads them through redis-py)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from restate_redis import RedisStateStore
from tests.support.counting import CountingConnection, open_counted_store
from tests.support.servers import Server, start_server

MakeStore = Callable[..., RedisStateStore]


@pytest.fixture(params=[_AsyncHiredisParser, _AsyncRESP2Parser], ids=["hiredis", "python-parser"])
def parser(request: pytest.FixtureRequest) -> type:
    """One of redis-py's reply parsers."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def make_store(server: Server, parser: type) -> AsyncIterator[MakeStore]:
    """Stores on clients with that parser (``url``: another server than the test server;
    other options go to the client); closed with their clients at the end of the test."""
    made: list[RedisStateStore] = []

    def make(url: str | None = None, **options: object) -> RedisStateStore:
        client = aioredis.Redis.from_url(url or server.url, parser_class=parser, **options)
        made.append(RedisStateStore(client))
        return made[-1]

    yield make
    for store in made:
        await store.aclose()
        await store.client.aclose()


@pytest.fixture(params=[None, 5.0], ids=["no-socket-timeout", "socket-timeout"])
async def counted(
    server: Server, parser: type, request: pytest.FixtureRequest
) -> AsyncIterator[RedisStateStore]:
    """A store whose connections log what they send; with and without a socket_timeout, which
    bounds the wait for the link's replies."""
    options = {"socket_timeout": request.param, "parser_class": parser}
    async with open_counted_store(
        server.url, pool_options=options, lease_ttl=5, acquire_timeout=10
    ) as store:
        yield store


async def test_a_plain_client_takes_the_link_and_a_pinned_one_does_not(
    make_store: MakeStore,
) -> None:
    a, b = make_store(), make_store(single_connection_client=True)
    await a.client.flushall()
    assert a.backend.wire.direct and not b.backend.wire.direct
    for store, n in ((a, 1), (b, 2), (a, 3)):
        async with store.object("Svc", "obj", state_preload=False) as ctx:
            before = await ctx.get("n")
            assert before == (None if n == 1 else n - 1)
            ctx.set("n", n)
            ctx.set("blob", bytes(range(256)) * 4)
    async with b.object("Svc", "obj", shared=True) as ctx:
        assert await ctx.get("n") == 3
        assert await ctx.get("blob") == bytes(range(256)) * 4


async def test_scripts_flushed_from_the_server_are_loaded_again(
    counted: RedisStateStore,
) -> None:
    async with counted.object("Svc", "obj") as ctx:
        ctx.set("n", 1)
    await counted.client.script_flush()
    CountingConnection.sent_log.clear()
    async with counted.object("Svc", "obj") as ctx:
        ctx.set("n", await ctx.get("n") + 1)
    # open: NOSCRIPT, load, again; commit: NOSCRIPT, load, again
    assert CountingConnection.sent_log == ["EVALSHA", "SCRIPT", "EVALSHA"] * 2
    assert await counted.client.hget(counted.keyspace.object_keys("Svc", "obj").state, "n")
    async with counted.object("Svc", "obj", shared=True) as ctx:
        assert await ctx.get("n") == 2


async def test_a_command_cancelled_in_flight_does_not_leave_its_reply_to_the_next(
    counted: RedisStateStore,
) -> None:
    """The reply of a command whose caller was cancelled is read and dropped: the next
    command on the link gets its own reply, and the link stays up."""
    client = counted.client
    keys = counted.keyspace.object_keys("Svc", "obj")
    await client.hset(keys.state, mapping={"a": b"\x01", "b": b"\x02"})
    admin = aioredis.Redis(
        connection_pool=aioredis.ConnectionPool(**client.connection_pool.connection_kwargs)
    )
    try:
        link_id = await counted.backend.wire.execute("CLIENT", "ID")
        await admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(counted.backend.wire.execute("HGET", keys.state, "a"), 0.05)
        await asyncio.sleep(0.4)  # the pause ends; the cancelled HGET's reply is sent
        assert await counted.backend.wire.execute("HGET", keys.state, "b") == b"\x02"
        assert await counted.backend.wire.execute("HGET", keys.state, "a") == b"\x01"
        assert await counted.backend.wire.execute("CLIENT", "ID") == link_id
    finally:
        await admin.aclose()


async def test_a_write_to_a_stalled_server_times_out_and_drops_the_connection(
    server: Server, make_store: MakeStore
) -> None:
    store = make_store(socket_timeout=0.5)
    key = store.keyspace.object_keys("Svc", "obj").state
    assert await store.backend.wire.execute("HSET", key, "n", b"1") in (0, 1)
    # far more than the socket buffers take, so the write itself must wait; the
    # socket_timeout ends it (wait_for only keeps a broken timeout from hanging the run)
    with server.paused(), pytest.raises(RedisTimeoutError, match="writing"):
        big = store.backend.wire.execute("HSET", key, "big", b"x" * (64 << 20))
        await asyncio.wait_for(big, timeout=60)
    assert await store.backend.wire.execute("HGET", key, "n") == b"1"
    assert await store.backend.wire.execute("HEXISTS", key, "big") == 0


async def _stat(client: aioredis.Redis, field: str) -> int:
    return int((await client.info("stats"))[field])


async def _quiet_reads(client: aioredis.Redis) -> int:
    """The server's read count once it reads nothing but these INFO calls (an earlier test's
    dropped connection may still be draining into it)."""
    before = await _stat(client, "total_reads_processed")
    for _ in range(200):
        await asyncio.sleep(0.01)
        now = await _stat(client, "total_reads_processed")
        if now - before == 1:  # the INFO call itself
            return now
        before = now
    raise AssertionError("the server kept reading from other connections")


async def test_commands_issued_together_reach_the_server_in_one_read(
    make_store: MakeStore,
) -> None:
    """Concurrent sessions' commands share the store's link and one write: the server sees
    far fewer reads than commands, and every caller gets its own reply."""
    store, admin = make_store(), make_store().client
    key = store.keyspace.object_keys("Svc", "obj").state
    await admin.hset(key, mapping={f"f{i}": f"v{i}".encode() for i in range(50)})
    await store.backend.wire.execute("PING")  # the link is connected
    counts = []
    for _ in range(5):  # the fewest of a few tries: other clients' reads add to the count
        reads = await _quiet_reads(admin)
        replies = await asyncio.gather(
            *(store.backend.wire.execute("HGET", key, f"f{i}") for i in range(50))
        )
        assert replies == [f"v{i}".encode() for i in range(50)]
        counts.append(await _stat(admin, "total_reads_processed") - reads)
    # 50 commands; the INFO call itself is one read; allow a split write
    assert min(counts) <= 4, counts


async def test_a_link_closed_by_the_server_is_replaced_before_the_next_command(
    make_store: MakeStore,
) -> None:
    store, admin = make_store(), make_store().client
    first = await store.backend.wire.execute("CLIENT", "ID")
    assert await admin.client_kill_filter(_id=first) == 1
    await asyncio.sleep(0.1)  # the close reaches the idle link's stream
    second = await store.backend.wire.execute("CLIENT", "ID")  # no error: a new link
    assert second != first
    async with store.object("Svc", "obj") as ctx:
        ctx.set("n", 1)
    assert await store.backend.wire.execute("CLIENT", "ID") == second
    await store.aclose()
    ids = [int(c["id"]) for c in await admin.client_list()]
    assert second not in ids  # aclose closed the link


async def test_commands_queued_when_the_connection_drops_fail_and_leave_no_writer_on_the_loop(
    make_store: MakeStore,
) -> None:
    """The connection ends (as when the loop reads a reset from the server) in the step
    before the commands queued behind the one in flight are written: all of them fail with a
    connection error, the loop watches nothing for the closed socket's descriptor, and the
    next command goes out on a new link. (On Python 3.12 and 3.13, CPython gh-136234,
    writelines on a lost connection registers a writer for its socket, which the loop keeps
    after the socket is closed: the next socket given that descriptor, e.g. a new connection
    being connected, is then never reported ready and waits for its own timeout.)"""
    store = make_store()
    first = await store.backend.wire.execute("CLIENT", "ID")
    link = store.backend.wire._link
    assert link is not None
    transport = link._transport
    fd = transport.get_extra_info("socket").fileno()
    calls = [asyncio.ensure_future(store.backend.wire.execute("PING")) for _ in range(3)]
    await asyncio.sleep(0)  # the first PING is written; the others wait for the next step
    assert len(link._queued) == 2
    transport.abort()  # what the loop does when a read fails, before they are written
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    await link._writer.wait_closed()  # the socket is closed: its descriptor is free
    assert not asyncio.get_running_loop().remove_writer(fd)  # nothing was left registered
    assert await store.backend.wire.execute("CLIENT", "ID") != first


async def test_commands_in_flight_fail_together_when_the_server_stalls_then_a_new_link_serves(
    server: Server, make_store: MakeStore
) -> None:
    store = make_store(socket_timeout=0.5)
    key = store.keyspace.object_keys("Svc", "obj").state
    await store.backend.wire.execute("HSET", key, "n", b"1")
    first = await store.backend.wire.execute("CLIENT", "ID")
    with server.paused():
        results = await asyncio.gather(
            *(store.backend.wire.execute("HINCRBY", key, "i", 1) for _ in range(5)),
            return_exceptions=True,
        )
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert await store.backend.wire.execute("CLIENT", "ID") != first
    assert await store.backend.wire.execute("HGET", key, "n") == b"1"


async def test_error_replies_go_to_their_own_commands_and_the_link_stays_up(
    counted: RedisStateStore,
) -> None:
    keys = counted.keyspace.object_keys("Svc", "obj")
    await counted.client.set(keys.lease, b"a string")
    link_id = await counted.backend.wire.execute("CLIENT", "ID")
    results = await asyncio.gather(
        counted.backend.wire.execute("HSET", keys.state, "n", b"1"),
        counted.backend.wire.execute("HGET", keys.lease, "n"),  # WRONGTYPE
        counted.backend.wire.execute("HGET", keys.state),  # wrong number of arguments
        counted.backend.wire.execute("HGET", keys.state, "n"),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[3] == b"1", results
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
    assert isinstance(results[2], ResponseError) and "wrong number" in str(results[2])
    assert await counted.backend.wire.execute("CLIENT", "ID") == link_id


async def test_an_idle_link_does_not_time_out_and_slow_replies_within_the_timeout_arrive(
    make_store: MakeStore,
) -> None:
    """socket_timeout bounds each wait for the next reply, not the time between commands nor
    the time a stream of replies takes."""
    store = make_store(socket_timeout=0.5)
    link_id = await store.backend.wire.execute("CLIENT", "ID")
    await asyncio.sleep(1.2)  # idle for more than two socket timeouts
    assert await store.backend.wire.execute("CLIENT", "ID") == link_id
    # WAIT for a replica that does not exist blocks this connection (not the server) for
    # 0.3 s, then Redis reads the next command: replies come at about 0.3, 0.6 and 0.9 s,
    # commands wait on the link for 0.9 s, and each reply within 0.3 s of the one before
    waits = [store.backend.wire.execute("WAIT", 1, 300) for _ in range(3)]
    assert list(await asyncio.gather(*waits)) == [0, 0, 0]
    assert await store.backend.wire.execute("CLIENT", "ID") == link_id


async def test_a_server_demoted_to_a_replica_is_left_for_a_new_connection(
    server: Server, make_store: MakeStore
) -> None:
    """READONLY (a failover made the server a replica) ends the link, so that the next
    command connects anew, as Sentinel or a moved DNS name would then lead to the master."""
    own = start_server(server.flavour)
    store, admin = make_store(own.url), make_store(own.url).client
    key = store.keyspace.object_keys("Svc", "obj").state
    try:
        first = await store.backend.wire.execute("CLIENT", "ID")
        await admin.execute_command("REPLICAOF", "127.0.0.1", server.port)
        with pytest.raises(ReadOnlyError):
            await store.backend.wire.execute("HSET", key, "n", b"1")
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        assert await store.backend.wire.execute("HSET", key, "n", b"2") == 1
        second = await store.backend.wire.execute("CLIENT", "ID")
        assert second != first
        assert first not in [int(c["id"]) for c in await admin.client_list()]
    finally:
        await store.aclose()  # before its server stops
        own.stop()
        shutil.rmtree(own.dir, ignore_errors=True)


async def test_a_resp3_client_reads_and_commits_through_the_link(make_store: MakeStore) -> None:
    store = make_store(protocol=3)
    keys = store.keyspace.object_keys("Svc", "resp3")
    await store.client.delete(keys.state)
    for _ in range(3):
        async with store.object("Svc", "resp3", state_preload=["n", "missing"]) as ctx:
            assert await ctx.get("missing") is None
            ctx.set("n", (await ctx.get("n") or 0) + 1)
    async with store.object("Svc", "resp3", shared=True) as ctx:
        assert await ctx.get("n") == 3
        assert await ctx.state_keys() == ["n"]
    assert await store.client.hget(keys.state, "n") == b"\x03"


async def test_the_public_path_can_be_forced_and_serves_sessions(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from restate_redis.backend.wire import FORCE_PUBLIC_ENV

    monkeypatch.setenv(FORCE_PUBLIC_ENV, "1")
    client = aioredis.Redis.from_url(server.url)
    store = RedisStateStore(client)
    try:
        assert not store.backend.wire.direct
        async with store.object("Svc", "pub") as ctx:
            ctx.set("n", (await ctx.get("n") or 0) + 1)
        async with store.object("Svc", "pub", state_preload=False) as ctx:
            assert await ctx.get("n") == 1
        assert store.backend.wire._link is None  # nothing went through a link
    finally:
        await store.aclose()
        await client.aclose()


async def test_a_connection_that_fails_the_probe_falls_back_for_good(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from restate_redis.backend import wire

    monkeypatch.setattr(wire, "_probe", lambda conn: "transport.set_protocol")
    client = aioredis.Redis.from_url(server.url)
    store = RedisStateStore(client)
    try:
        assert store.backend.wire.direct
        with caplog.at_level("WARNING", logger="restate_redis"):
            for i in range(3):
                async with store.object("Svc", "probe") as ctx:
                    ctx.set("i", i)
        assert not store.backend.wire.direct and store.backend.wire._link is None
        warnings = [r for r in caplog.records if "does not offer" in r.getMessage()]
        assert len(warnings) == 1 and "transport.set_protocol" in warnings[0].getMessage()
        async with store.object("Svc", "probe", shared=True) as ctx:
            assert await ctx.get("i") == 2
    finally:
        await store.aclose()
        await client.aclose()


def test_the_probe_names_what_a_connection_lacks() -> None:
    from types import SimpleNamespace

    from restate_redis.backend.wire import _probe

    assert "_writer" in (_probe(SimpleNamespace()) or "")
    writer = SimpleNamespace(writelines=lambda b: None, transport=SimpleNamespace())
    assert _probe(SimpleNamespace(_writer=writer)) == "transport.get_protocol"


async def test_a_real_connection_passes_the_probe(make_store: MakeStore) -> None:
    from restate_redis.backend.wire import _probe

    store = make_store()
    await store.backend.wire.execute("PING")
    assert store.backend.wire._link is not None
    assert _probe(store.backend.wire._link.conn) is None
