"""What the scripts protect: bounded work on huge objects, type and bookkeeping checks before
any write, leases freed however a session ends, emptied objects' bookkeeping, purge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgpack
import pytest
import redis.asyncio as aioredis

from restate_redis import (
    CorruptStateError,
    LeaseTimeoutError,
    RedisStateStore,
    StateDecodeError,
    StateError,
    StoreError,
    WorkflowCompletedError,
    WrongTypeError,
)
from restate_redis.keyspace import EMPTY_GRACE_SECONDS, META_FIELD
from tests.support.counting import CountingConnection, open_counted_store
from tests.support.keys import read_meta, read_state
from tests.support.servers import Server

packb = msgpack.packb


async def fill(client: aioredis.Redis, key: str, n: int, chunk: int = 2_000) -> None:
    """``n`` small fields in ``key``, in commands of ``chunk`` fields (each about a ms)."""
    async with client.pipeline(transaction=False) as pipe:
        for start in range(0, n, chunk):
            pipe.hset(key, mapping={f"f{i}": packb(i) for i in range(start, min(n, start + chunk))})
        await pipe.execute()


# -- bounded work --------------------------------------------------------------------------------


async def test_state_written_by_another_tool_is_counted_once(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Svc", "foreign")
    await client.hset(keys.state, mapping={"a": packb(1), "bb": packb("two")})
    async with store.object("Svc", "foreign", shared=True) as ctx:
        assert await ctx.get("bb") == "two"
    # the size is stored by the first eager open, so no later open counts again
    meta = await read_meta(client, keys.state)
    assert meta.size == 1 + len(packb(1)) + 2 + len(packb("two"))


async def test_eager_open_over_the_field_limit_loads_nothing(client: aioredis.Redis) -> None:
    store = RedisStateStore(client, eager_state_field_limit=50)
    try:
        keys = store.keyspace.object_keys("Svc", "wide")
        await fill(client, keys.state, 51)
        async with store.object("Svc", "wide") as ctx:
            assert ctx.mode == "lazy"
            assert await ctx.get("f50") == 50
            assert len(await ctx.state_keys()) == 51
            ctx.set("new", 1)
        assert (await read_meta(client, keys.state)).size is None  # too many keys to count here
        await client.hdel(keys.state, "f0", "f1")
        async with store.object("Svc", "wide") as ctx:  # 50 keys: within the limit again
            assert ctx.mode == "eager"
            assert len(await ctx.state_keys()) == 50
        assert ((await read_meta(client, keys.state)).size or 0) > 0
    finally:
        await store.aclose()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_field_limit_must_be_a_positive_int(client: aioredis.Redis, bad: object) -> None:
    with pytest.raises(ValueError, match="eager_state_field_limit"):
        RedisStateStore(client, eager_state_field_limit=bad)  # type: ignore[arg-type]


FILLER = "test-filler"  # the test's own client: its fills are not the library's commands


@pytest.fixture
async def slowlog(server: Server, client: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    """The server logs every command over 50 ms; the test asserts on what it logged. Yields
    the test's own client, whose commands (filling huge objects) are not the library's."""
    old = (await client.config_get("slowlog-log-slower-than"))["slowlog-log-slower-than"]
    await client.config_set("slowlog-log-slower-than", 50_000)
    await client.config_set("slowlog-max-len", 1024)
    filler = aioredis.Redis.from_url(server.url, client_name=FILLER)
    yield filler
    await filler.aclose()
    await client.config_set("slowlog-log-slower-than", old)
    await client.unlink(*[k async for k in client.scan_iter(count=1000)] or ["none"])


# Redis only: Valkey (9) frees a deleted key in the background by default
# (lazyfree-lazy-user-del yes), Debian's Redis 7.0 does not, so a DEL of the huge state
# shows in the slow log only there; the scans and renames are the same commands on both.
@pytest.mark.parametrize("server", ["redis"], indirect=True)
async def test_no_command_over_50ms_on_a_million_key_object(
    slowlog: aioredis.Redis, store: RedisStateStore
) -> None:
    client = slowlog
    n = 1_000_000
    keys = store.keyspace.object_keys("Big", "one")
    await fill(client, keys.state, n)  # written by another tool: no meta, no stored size
    await client.slowlog_reset()

    async with store.object("Big", "one") as ctx:  # eager: falls back to lazy, counts nothing
        assert ctx.mode == "lazy"
        assert await ctx.get("f7") == 7
        ctx.set("f7", "seven")
    async with store.object("Big", "one", state_preload=False, shared=True) as ctx:
        assert len(await ctx.state_keys()) == n
    async with store.object("Big", "one", commit_id="clear-1") as ctx:
        ctx.clear_all()  # replay-protected: the old state is renamed aside, not copied
    assert await read_state(client, keys.state) == {}
    async with store.object("Big", "one", commit_id="clear-1") as ctx:  # its replay
        assert ctx.replayed and ctx.mode == "lazy"
        assert await ctx.get("f7") == "seven"
        assert await ctx.get("f8") == 8
        assert len(await ctx.state_keys()) == n
        ctx.clear_all()
    assert await read_state(client, keys.state) == {}
    async with store.object("Big", "one") as ctx:
        ctx.set("x", 1)  # a commit without an id: the renamed state is unlinked
    assert await client.exists(keys.old) == 0

    await fill(client, keys.state, n)
    async with store.object("Big", "one", shared=True) as ctx:
        assert len(await ctx.get_all()) == n + 1
    async with store.object("Big", "one") as ctx:
        ctx.clear_all()  # not replay-protected: unlinked
    await fill(client, keys.state, n)
    assert await store.purge("Big", "one")
    assert await client.exists(*keys.all) == 0

    slow = await client.slowlog_get(1024)
    ours = [e for e in slow if e.get("client_name") not in (FILLER, FILLER.encode())]
    assert [(e["duration"], e["command"][:120], e.get("client_name")) for e in ours] == []


# -- checks before the first write ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["state", "old", "lease", "wait", "wake", "commits"])
async def test_a_foreign_value_under_any_key_is_refused_before_any_write(
    store: RedisStateStore, client: aioredis.Redis, suffix: str
) -> None:
    keys = store.keyspace.object_keys("Svc", "o")
    async with store.object("Svc", "o") as ctx:
        ctx.set("a", 1)
    redis_key = getattr(keys, suffix)
    await client.delete(redis_key)
    if suffix in ("lease", "wait"):  # strings: a hash is what does not belong there
        await client.hset(redis_key, "foreign", "1")
    else:
        await client.set(redis_key, b"foreign")
    before = {k: await client.dump(k) for k in keys.all}

    with pytest.raises(WrongTypeError) as err:
        async with store.object("Svc", "o", commit_id="x") as ctx:
            ctx.set("a", 2)
            ctx.set("b", 3)
    assert redis_key in str(err.value)
    assert "'Svc'/'o'" in str(err.value)
    after = {k: await client.dump(k) for k in keys.all}
    assert {k: v for k, v in after.items() if k != keys.lease} == {
        k: v for k, v in before.items() if k != keys.lease
    }
    assert await client.type(redis_key) == (b"hash" if suffix in ("lease", "wait") else b"string")


@pytest.mark.parametrize("meta", ["not-a-number", "1 x - - -", b"\x95\x01\xc1\xff"])
@pytest.mark.parametrize("preload", [True, False])
async def test_bookkeeping_that_does_not_parse_is_a_state_error(
    store: RedisStateStore, client: aioredis.Redis, meta: str | bytes, preload: bool
) -> None:
    keys = store.keyspace.object_keys("Svc", "o")
    async with store.object("Svc", "o") as ctx:
        ctx.set("a", 1)
    await client.hset(keys.state, META_FIELD, meta)
    state = await client.hgetall(keys.state)
    with pytest.raises(CorruptStateError) as err:
        async with store.object("Svc", "o", state_preload=preload) as ctx:
            ctx.set("a", 2)
    assert isinstance(err.value, StateError)
    assert "'Svc'/'o'" in str(err.value) and repr(meta) in str(err.value)
    assert await client.hgetall(keys.state) == state


async def test_a_wrong_password_is_a_state_error(server: Server, client: aioredis.Redis) -> None:
    await client.acl_setuser(
        "rr-user", enabled=True, passwords=["+right"], keys="*", commands=["+@all"]
    )
    store = RedisStateStore.from_url(
        f"redis://rr-user:wrong@127.0.0.1:{server.port}/0", retry_attempts=2, retry_timeout=1
    )
    try:
        with pytest.raises(StoreError, match="credentials"):
            async with store.object("Svc", "o"):
                pass
    finally:
        await store.aclose()
        await client.acl_deluser("rr-user")


# -- leases freed however a session ends ---------------------------------------------------------


async def test_a_session_cancelled_while_its_open_is_in_flight_frees_the_lease(
    server: Server, client: aioredis.Redis
) -> None:
    store = RedisStateStore(client, lease_ttl=60, acquire_timeout=5)
    keys = store.keyspace.object_keys("Svc", "o")
    try:
        async with store.object("Svc", "o") as ctx:  # the scripts are loaded
            ctx.set("a", 1)

        async def open_it() -> None:
            async with store.object("Svc", "o"):
                pass

        with server.paused():  # the open is written, and runs once the server resumes
            task = asyncio.create_task(open_it())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        async with store.object("Svc", "o") as ctx:  # would wait 60 s for a leaked lease
            assert await ctx.get("a") == 1
        await store.backend.settle()  # a session that wrote nothing does not wait for this
        assert await client.exists(keys.lease) == 0
    finally:
        await store.aclose()


async def test_an_open_that_raises_after_taking_the_lease_frees_it(
    client: aioredis.Redis,
) -> None:
    store = RedisStateStore(client, lease_ttl=60, acquire_timeout=2)
    keys = store.keyspace.object_keys("Svc", "o")
    try:
        await client.hset(keys.state, mapping={b"\xc3\x28": packb(1), b"ok": packb(2)})
        with pytest.raises(StateDecodeError, match="not UTF-8"):
            async with store.object("Svc", "o"):  # eager: the lease is taken, then decoding fails
                pass
        await asyncio.sleep(0)  # the release runs in a task of the store's
        async with store.object("Svc", "o", state_preload=False) as ctx:
            assert await ctx.get("ok") == 2
    finally:
        await store.aclose()


async def test_an_open_the_script_refused_sends_no_release(server: Server) -> None:
    """A completed workflow's run, or a lease that stayed busy: the script took nothing, so
    no release round trip follows (one would on a cancelled or failing open)."""
    async with open_counted_store(server.url, lease_ttl=60, acquire_timeout=0.3) as store:
        async with store.workflow("Signup", "done") as ctx:
            ctx.set("a", 1)
        CountingConnection.sent_log.clear()
        with pytest.raises(WorkflowCompletedError):
            async with store.workflow("Signup", "done"):
                pass
        await asyncio.sleep(0.1)  # what a release task of the store's would have sent
        assert CountingConnection.sent_log == ["EVALSHA"]

        # held by another worker's store (a session of the same store would wait in line)
        async with RedisStateStore.from_url(server.url) as other, other.object("Svc", "busy"):
            CountingConnection.sent_log.clear()
            with pytest.raises(LeaseTimeoutError):
                async with store.object("Svc", "busy"):
                    pass
            await asyncio.sleep(0.1)
            log = list(CountingConnection.sent_log)
        # each open answered "busy", then a wait; the last open's refusal ends it
        assert log.count("EVALSHA") == log.count("BLPOP") + 1 and log[-1] == "EVALSHA", log


async def test_a_held_lease_still_times_out(client: aioredis.Redis) -> None:
    store = RedisStateStore(client, lease_ttl=60, acquire_timeout=0.3)
    try:
        async with store.object("Svc", "o"):
            with pytest.raises(LeaseTimeoutError):
                async with store.object("Svc", "o"):
                    pass
    finally:
        await store.aclose()


# -- emptied objects and purge -------------------------------------------------------------------


@pytest.mark.parametrize("commit_id", [None, "c-1"])
async def test_an_emptied_objects_bookkeeping_expires_after_the_grace_period(
    store: RedisStateStore, client: aioredis.Redis, commit_id: str | None
) -> None:
    keys = store.keyspace.object_keys("Svc", "o")
    async with store.object("Svc", "o") as ctx:
        ctx.set("a", 1)
    assert await client.pttl(keys.state) == -1
    async with store.object("Svc", "o", commit_id=commit_id) as ctx:
        ctx.clear_all()
    assert await read_state(client, keys.state) == {}
    assert 0 < await client.pttl(keys.state) <= EMPTY_GRACE_SECONDS * 1000
    if commit_id:  # the replay of the clearing commit is still recognised meanwhile
        async with store.object("Svc", "o", commit_id=commit_id) as ctx:
            assert ctx.replayed and await ctx.get("a") == 1
            ctx.clear_all()
        assert await read_state(client, keys.state) == {}
        assert 0 < await client.pttl(keys.old) <= EMPTY_GRACE_SECONDS * 1000
    async with store.object("Svc", "o") as ctx:
        ctx.set("b", 2)  # state again: the bookkeeping is kept as long as the state
    assert await client.pttl(keys.state) == -1
    assert not (await read_meta(client, keys.state)).fading
    assert (await read_meta(client, keys.state)).version == 3


async def test_clearing_an_expiring_object_keeps_its_expiry(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    keys = store.keyspace.object_keys("Svc", "o")
    async with store.object("Svc", "o", ttl=30) as ctx:
        ctx.set("a", 1)
    async with store.object("Svc", "o") as ctx:
        ctx.clear("a")
    assert 0 < await client.pttl(keys.state) <= 30_000
    assert not (await read_meta(client, keys.state)).fading


async def test_purge_lets_a_completed_workflow_run_again(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    async with store.workflow("Signup", "wf-1") as ctx:
        ctx.set("email", "a@example.com")
    with pytest.raises(WorkflowCompletedError, match="kv purge Signup wf-1") as err:
        async with store.workflow("Signup", "wf-1"):
            pass
    assert "store.purge('Signup', 'wf-1')" in str(err.value)
    assert await store.purge("Signup", "wf-1") is True
    left = [k async for k in client.scan_iter(match="restate:{Signup:wf-1}:*")]
    assert left == []  # no session waited: no release signal either
    async with store.workflow("Signup", "wf-1") as ctx:
        assert ctx.workflow_status == "running" and ctx.version == 0
        assert await ctx.get("email") is None
    assert await store.purge("Signup", "nothing-here") is False


async def test_purge_waits_for_the_running_handler(store: RedisStateStore) -> None:
    async with store.object("Svc", "o") as ctx:
        ctx.set("a", 1)
    order: list[str] = []
    holding = asyncio.Event()

    async def handler() -> None:
        async with store.object("Svc", "o") as ctx:
            order.append("handler")
            holding.set()
            await asyncio.sleep(0.2)
            ctx.set("a", 2)

    task = asyncio.create_task(handler())
    await holding.wait()
    assert await store.purge("Svc", "o") is True
    order.append("purge")
    await task
    async with store.object("Svc", "o") as ctx:
        assert await ctx.state_keys() == []
    assert order == ["handler", "purge"]


async def test_an_edit_of_an_emptied_object_does_not_make_it_expire(
    store: RedisStateStore, client: aioredis.Redis
) -> None:
    from restate_redis.tools.admin import Admin

    keys = store.keyspace.object_keys("Svc", "o")
    admin = Admin(store)
    await admin.set("Svc", "o", "a", 1)
    await admin.clear_all("Svc", "o")
    assert await client.pttl(keys.state) > 0  # the grace period of the bookkeeping
    await admin.set("Svc", "o", "b", 2)
    assert await client.pttl(keys.state) == -1
    assert await client.pttl(keys.state) == -1
