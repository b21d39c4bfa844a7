"""Faults on purpose: lost replies, cut connections, stalled and killed workers, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rex

from restate_redis import (
    CommitError,
    LeaseLostError,
    LeaseTimeoutError,
    RedisStateStore,
    StoreUnavailableError,
)
from restate_redis.backend.engine import commit_keys
from restate_redis.backend.retry import is_transient
from restate_redis.keyspace import ObjectKeys
from restate_redis.session import Session
from tests.support.keys import read_meta
from tests.support.proxy import CutProxy
from tests.support.servers import Server, free_port, start_server
from tests.support.stores import empty_store
from tests.support.workers import SERVICE, Workers, object_keys, read_counts, run_increments


@pytest.fixture
async def direct(redis_server: Server) -> AsyncIterator[RedisStateStore]:
    """A store straight on the server (no proxy), on an empty database."""
    async with empty_store(redis_server.url, lease_ttl=2, acquire_timeout=10) as store:
        yield store


def commit_sha(store: RedisStateStore) -> bytes:
    return store.backend.scripts.commit.sha.encode()


@contextlib.contextmanager
def proxy_to(server: Server, **options: object) -> Iterator[CutProxy]:
    proxy = CutProxy(server.port, **options).start()  # type: ignore[arg-type]
    try:
        yield proxy
    finally:
        proxy.stop()


# -- retries that never apply a commit twice ----------------------------------------------------


async def committed_n_1(store: RedisStateStore, key: str) -> tuple[ObjectKeys, list[str], Session]:
    """Commit n=1 on ``key``: its keys, commit.lua's KEYS, and the (closed) session, whose
    token and commit id a test sends again by hand."""
    keys = store.keyspace.object_keys(SERVICE, key)
    redis_keys = commit_keys(keys)
    async with store.object(SERVICE, key) as first:
        first.set("n", 1)
    return keys, redis_keys, first


async def test_lost_commit_reply_is_retried_and_recognised(
    redis_server: Server, direct: RedisStateStore
) -> None:
    """The commit reaches Redis, its reply is cut: the retry reports success, applied once."""
    marker = commit_sha(direct)
    with proxy_to(redis_server, cut_commit_reply=1.0, max_commit_cuts=1, marker=marker) as proxy:
        async with RedisStateStore.from_url(proxy.url, lease_ttl=2) as store:
            async with store.object(SERVICE, "a") as s:
                s.set("n", 1)
            async with store.object(SERVICE, "a") as s:
                s.set("n", await s.get("n") + 1)
    assert proxy.stats["cut_commit_reply"] == 1
    async with direct.object(SERVICE, "a", shared=True) as s:
        assert await s.get("n") == 2
        assert s.version == 2  # two commits, neither applied twice


async def test_every_commit_reply_lost_is_a_commit_error_applied_once(
    redis_server: Server, direct: RedisStateStore
) -> None:
    """No reply ever comes back: after the retry budget the user gets CommitError (outcome
    unknown); Redis holds the commit exactly once."""
    marker = commit_sha(direct)
    with proxy_to(redis_server, cut_commit_reply=1.0, marker=marker) as proxy:
        async with RedisStateStore.from_url(proxy.url, retry_attempts=4) as store:
            with pytest.raises(CommitError, match="may or may not have been applied"):
                async with store.object(SERVICE, "lost") as s:
                    s.set("n", 1)
    assert proxy.stats["cut_commit_reply"] == 4
    async with direct.object(SERVICE, "lost", shared=True) as s:
        assert await s.get("n") == 1
        assert s.version == 1


async def test_retried_commit_recognised_after_other_commits(direct: RedisStateStore) -> None:
    """A retry that lands after other sessions committed is still recognised (for at least
    the last 1000 commits, while the object commits at least once a minute); past that it is
    a fencing rejection, never a second application."""
    keys, redis_keys, first = await committed_n_1(direct, "hot")
    # token, commit id, flags, expire ms, lease ttl ms, field limit, grace ms, next token,
    # history (off), deletes, ttls, sets
    args = [
        first._target.token,
        first._target.commit_tag,
        "a",
        0,
        2000,
        20_000,
        60_000,
        "",
        "",
        0,
        0,
        "n",
        b"\x01",
    ]

    async def retry_first() -> list[int]:
        # status, version (the third item: whether the release woke a waiter)
        return [int(x) for x in await direct.backend.scripts.commit(redis_keys, args)][:2]

    for i in range(1000):
        if i % 100 == 0:
            assert await retry_first() == [2, i + 1]
        async with direct.object(SERVICE, "hot") as s:
            s.set("other", i)
    assert await retry_first() == [2, 1001]  # still within the last 1000 commits
    for i in range(1000, 1100):
        async with direct.object(SERVICE, "hot") as s:
            s.set("other", i)
    assert 1000 <= await direct.client.zcard(keys.commits) < 1064  # trimmed every 64
    assert 0 < await direct.client.pttl(keys.commits) <= 60_000
    assert await retry_first() == [-3]  # the lease is gone: rejected, nothing written
    async with direct.object(SERVICE, "hot", shared=True) as s:
        assert await s.get("n") == 1
        assert s.version == 1101


async def test_a_commit_sent_again_below_the_store_is_recognised(direct: RedisStateStore) -> None:
    """A client library that resends a commit on its own (redis-py's cluster client does
    after a connection error) sends it without the retry flag: once its first execution
    released the lease, the script still finds its id among the recent commits."""
    keys, redis_keys, first = await committed_n_1(direct, "resent")
    async with direct.object(SERVICE, "resent") as s:  # another commit, then a new holder
        s.set("other", 1)
    second = direct.object(SERVICE, "resent")
    await second.__aenter__()
    args = [
        first._target.token,
        first._target.commit_tag,
        "",
        0,
        2000,
        20_000,
        60_000,
        "",
        "",
        0,
        0,
        "n",
        b"\x05",
    ]
    replied = await direct.backend.scripts.commit(redis_keys, args)
    assert [int(x) for x in replied] == [2, 2, 0]  # recognised, version 2, no waiter woken
    assert await direct.client.get(keys.lease) == second._target.token.encode()  # untouched
    unknown = [first._target.token, "never-committed", "", 0, 2000, 20_000, 60_000, "", ""]
    unknown += [0, 0, "n", b"\x05"]
    assert [int(x) for x in await direct.backend.scripts.commit(redis_keys, unknown)] == [-3]
    await second.__aexit__(None, None, None)
    async with direct.object(SERVICE, "resent", shared=True) as s:
        assert await s.get("n") == 1
        assert s.version == 2


async def test_random_cuts_no_lost_no_doubled_increment(
    redis_server: Server, direct: RedisStateStore
) -> None:
    """Connections cut before requests, after requests and right after commits: every
    acknowledged increment is there exactly once."""
    keys = object_keys(5)
    with proxy_to(
        redis_server,
        cut_request=0.02,
        cut_reply=0.02,
        cut_commit_reply=0.2,
        marker=commit_sha(direct),
        seed=7,
    ) as proxy:
        async with RedisStateStore.from_url(
            proxy.url, lease_ttl=2, retry_attempts=100, retry_timeout=30
        ) as store:
            tally = await run_increments(
                store, keys, 600, seed=3, tasks=8, fail_every=10, max_delay=0.002
            )
    assert proxy.stats["cut_commit_reply"] > 10, proxy.stats
    assert proxy.stats["cut_request"] > 0 and proxy.stats["cut_reply"] > 0, proxy.stats
    assert set(tally.errors) == {"HandlerFailed"}, tally.errors
    assert sum(tally.unknown.values()) == 0
    counts = await read_counts(direct, keys)
    assert counts == {k: tally.acked[k] for k in keys}


async def test_retry_budget_spent_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    async with RedisStateStore.from_url(
        f"redis://127.0.0.1:{port}/0", retry_attempts=3, retry_timeout=5
    ) as store:
        with pytest.raises(StoreUnavailableError, match=r"open on 'Counter'/'a' after 3 attempts"):
            async with store.object(SERVICE, "a"):
                pass


def test_what_is_transient() -> None:
    for exc in [
        rex.ConnectionError("reset"),
        rex.TimeoutError("timeout"),
        rex.BusyLoadingError("LOADING"),
        rex.ReadOnlyError("READONLY You can't write against a read only replica."),
        rex.TryAgainError("TRYAGAIN"),
        rex.ClusterDownError("CLUSTERDOWN"),
        rex.ClusterError("TTL exhausted."),  # redirections that did not settle in one call
        rex.ResponseError("UNBLOCKED force unblock from blocking operation"),
        rex.ResponseError(
            "Error running script (call to f_x): @user_script:1: @user_script: 1: "
            "-READONLY You can't write against a read only replica."
        ),
        ConnectionResetError(),
    ]:
        assert is_transient(exc), exc
    for exc in [
        rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rex.NoScriptError("NOSCRIPT"),
        rex.DataError("bad value"),
        rex.ClusterCrossSlotError("CROSSSLOT"),
        LeaseLostError("lost"),
        ValueError("bad"),
    ]:
        assert not is_transient(exc), exc


# -- leases under stress ------------------------------------------------------------------------


async def test_stalled_holder_cannot_overwrite_the_next_holder(redis_server: Server) -> None:
    """A holder whose event loop blocks past its lease loses it; the next holder's write
    stands and the stalled holder's commit is rejected."""
    async with RedisStateStore.from_url(redis_server.url, lease_ttl=0.5) as store:
        await store.client.flushall()
        stalled = store.object(SERVICE, "s")
        await stalled.__aenter__()
        stalled.set("n", "stale")
        result: list[object] = []

        async def next_holder() -> None:
            url = redis_server.url
            async with RedisStateStore.from_url(url, lease_ttl=5, acquire_timeout=10) as other:
                async with other.object(SERVICE, "s") as s:
                    s.set("n", "fresh")
                result.append(s.lease_wait)

        thread = threading.Thread(target=lambda: asyncio.run(next_holder()))
        thread.start()
        thread.join(30)  # blocks this event loop: the stalled holder cannot renew
        assert result, "the next holder did not get the lease"
        with pytest.raises(LeaseLostError):
            await stalled.__aexit__(None, None, None)
        async with store.object(SERVICE, "s", shared=True) as s:
            assert await s.get("n") == "fresh"
            assert s.version == 1


async def test_sigkilled_worker_leaves_no_partial_state(
    redis_server: Server, direct: RedisStateStore, workers: Workers
) -> None:
    async with direct.object(SERVICE, "k") as s:
        s.set("n", 5)
    proc = workers.start("hold", redis_server.url, "k", "--lease-ttl", "1")
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line.strip() == "holding"
    keys = direct.keyspace.object_keys(SERVICE, "k")
    assert await direct.client.exists(keys.lease) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert 0 < await direct.client.pttl(keys.lease) <= 1000
    within_lease = RedisStateStore(direct.client, acquire_timeout=3)
    async with within_lease.object(SERVICE, "k") as s:
        assert await s.get_all() == {"n": 5}
        assert s.version == 1


async def test_acquire_timeout(direct: RedisStateStore) -> None:
    holder = direct.object(SERVICE, "busy")
    await holder.__aenter__()
    holder.set("n", 1)
    impatient = RedisStateStore(direct.client, acquire_timeout=0.2)
    with pytest.raises(LeaseTimeoutError, match=r"acquire_timeout=0\.2s"):
        async with impatient.object(SERVICE, "busy"):
            pass
    await holder.__aexit__(None, None, None)
    async with direct.object(SERVICE, "busy", shared=True) as s:
        assert await s.get("n") == 1


async def test_hot_object_every_waiter_progresses(
    redis_server: Server, direct: RedisStateStore, workers: Workers
) -> None:
    """3 processes x 4 tasks all on one object: every increment gets through, none times
    out waiting for the lease."""
    for seed in range(3):
        workers.start(
            "incr",
            redis_server.url,
            "--objects",
            "1",
            "--count",
            "100",
            "--fail-every",
            "0",
            "--max-delay",
            "0.001",
            "--seed",
            str(seed),
        )
    tally = workers.collect()
    assert not tally.errors, tally.errors
    assert (await read_counts(direct, object_keys(1)))["obj-0"] == 300 == tally.acked["obj-0"]
    waits = sorted(tally.lease_waits)
    p50, top = waits[len(waits) // 2] * 1000, waits[-1] * 1000
    print(f"lease wait on a hot object: p50 {p50:.1f} ms, max {top:.1f} ms")


# -- restarts -------------------------------------------------------------------------------------


async def test_restart_with_aof_loses_nothing_acknowledged(workers: Workers) -> None:
    srv = start_server("redis", "--appendonly", "yes", "--appendfsync", "always")
    try:
        client = aioredis.Redis.from_url(srv.url)
        keys = object_keys(5)
        for seed in range(2):
            workers.start(
                "incr",
                srv.url,
                "--objects",
                "5",
                "--count",
                "600",
                "--seed",
                str(seed),
                "--retry-timeout",
                "30",
                "--lease-ttl",
                "1",
            )

        async def progress() -> int:
            total = 0
            for key in keys:
                total += (await read_meta(client, f"restate:{{{SERVICE}:{key}}}:state")).version
            return total

        deadline = asyncio.get_running_loop().time() + 30
        while await progress() < 100:
            assert asyncio.get_running_loop().time() < deadline, "workers made no progress"
            await asyncio.sleep(0.05)
        await client.aclose()
        srv.kill()  # SIGKILL: only what appendfsync always wrote survives
        srv.start()
        tally = workers.collect()
        # A session whose lease ran out while the server was down ends with LeaseLostError
        # (nothing written) or, if its commit was in flight, CommitError (counted as unknown).
        allowed = {"HandlerFailed", "LeaseLostError", "CommitError"}
        assert set(tally.errors) <= allowed, tally.errors
        async with RedisStateStore.from_url(srv.url) as store:
            counts = await read_counts(store, keys)
        for key in keys:
            assert tally.acked[key] <= counts[key] <= tally.acked[key] + tally.unknown[key]
        assert sum(tally.acked.values()) > 100
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)
