"""Sessions of one store waiting for the same object: the lease is handed from one to the next
in the holder's commit script, and other processes still get their turn."""

from __future__ import annotations

import asyncio

from restate_redis import RedisStateStore
from restate_redis.session.handoff import HANDOFF_LIMIT
from tests.support.counting import CountingConnection, open_counted_store
from tests.support.servers import Server
from tests.support.workers import SERVICE, Tally, Workers, read_counts, run_increments


async def test_sixteen_sessions_on_one_object_hand_the_lease_on(server: Server) -> None:
    async with open_counted_store(server.url, lease_ttl=5) as store:
        async with store.object("Hot", "one") as ctx:
            ctx.set("n", 0)
        CountingConnection.sent_log.clear()

        async def increment() -> None:
            async with store.object("Hot", "one") as ctx:
                ctx.set("n", await ctx.get("n") + 1)

        await asyncio.gather(*(increment() for _ in range(16 * 20)))
        sent = list(CountingConnection.sent_log)
        async with store.object("Hot", "one", shared=True) as ctx:
            assert await ctx.get("n") == 16 * 20
        await store.backend.settle()
        assert await store.client.exists(store.keyspace.object_keys("Hot", "one").lease) == 0
    # Most sessions start with the lease and the state their predecessor committed: one
    # round trip each (the commit that hands on). Every HANDOFF_LIMIT-th one the lease is
    # released for other processes instead, and the next session of this store waits for
    # the release signal (BLPOP) and opens.
    releases = 16 * 20 // (HANDOFF_LIMIT + 1) + 1
    assert sent.count("BLPOP") <= releases
    assert sent.count("EVALSHA") <= 16 * 20 + releases
    assert len(sent) <= 16 * 20 + 3 * releases


async def test_a_session_of_another_process_gets_its_turn(server: Server, workers: Workers) -> None:
    async with RedisStateStore.from_url(server.url, lease_ttl=2) as store:
        keys = ["obj-0"]
        async with store.object(SERVICE, "obj-0") as ctx:
            ctx.set("n", 0)
        stop = asyncio.Event()
        # 16 sessions of this process on the object, without a pause, until the other
        # process has done its 20: with the lease always handed on inside this process, it
        # would never get it.
        local = asyncio.create_task(
            run_increments(store, keys, 10**9, seed=3, tasks=16, fail_every=0, stop=stop)
        )
        workers.start(
            "incr", server.url, "--objects", "1", "--count", "20", "--tasks", "1",
            "--fail-every", "0", "--max-delay", "0", "--acquire-timeout", "30",
        )  # fmt: skip
        try:
            other: Tally = await asyncio.wait_for(asyncio.to_thread(workers.collect, 60), 90)
        finally:
            stop.set()
            mine = await asyncio.wait_for(local, 60)
        assert sum(other.acked.values()) == 20, other.errors
        assert not mine.errors and not mine.unknown
        counts = await read_counts(store, keys)
        assert counts["obj-0"] == 20 + sum(mine.acked.values())


async def test_a_waiter_that_gives_up_passes_its_turn_on(server: Server) -> None:
    async with RedisStateStore.from_url(server.url, lease_ttl=5, acquire_timeout=5) as store:
        holder = store.object("Hot", "two")
        await holder.__aenter__()
        holder.set("n", 1)
        quitter = asyncio.create_task(store.object("Hot", "two").__aenter__())
        patient = asyncio.create_task(store.object("Hot", "two").__aenter__())
        await asyncio.sleep(0.05)
        quitter.cancel()
        await holder.__aexit__(None, None, None)
        session = await asyncio.wait_for(patient, 5)
        assert await session.get("n") == 1
        session.set("n", 2)
        await session.__aexit__(None, None, None)
        async with store.object("Hot", "two", shared=True) as ctx:
            assert await ctx.get("n") == 2
