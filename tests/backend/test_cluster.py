"""Redis Cluster: every operation, exact counts from many processes, and a live resharding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from restate_redis import RedisStateStore, ReplicationError
from tests.support.keys import read_meta, read_state
from tests.support.servers import Cluster, migrate_slot, start_cluster
from tests.support.stores import empty_store
from tests.support.workers import SERVICE, Workers, object_keys, read_counts

WORKERS, STEPS, OBJECTS = 4, 500, 20


@pytest.fixture(scope="module", params=["redis", "valkey"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A 3-master cluster of Debian redis-server, and one of Valkey."""
    c = start_cluster(3, flavour=request.param)
    yield c
    c.stop()


@pytest.fixture
async def cstore(cluster: Cluster) -> AsyncIterator[RedisStateStore]:
    async with empty_store(cluster.url, lease_ttl=2, acquire_timeout=10) as store:
        yield store


def master_port_of(store: RedisStateStore, key: str) -> int:
    node = store.client.get_node_from_key(store.keyspace.object_keys(SERVICE, key).state)
    return int(node.port)


async def test_from_url_gives_a_cluster_client(cstore: RedisStateStore) -> None:
    assert isinstance(cstore.client, RedisCluster)
    assert cstore.is_cluster
    assert not cstore.backend.wire.direct  # redis-py routes each command to its slot's master
    assert cstore.client.reinitialize_steps == 0  # a MOVED patches the slot map only


async def test_every_operation_on_a_cluster(cstore: RedisStateStore) -> None:
    async with cstore.object("Cart", "alice") as s:
        s.set("items", ["a", "b"])
        s.set("total", 3)
    async with cstore.object("Cart", "alice", state_preload=False) as s:
        assert await s.get("total") == 3
        assert await s.state_keys() == ["items", "total"]
        s.clear("items")
    async with cstore.object("Cart", "alice", state_preload=["items", "total"]) as s:
        assert await s.get("items") is None
        s.clear_all()
    async with cstore.object("Cart", "alice", shared=True) as s:
        assert await s.state_keys() == []
    async with cstore.workflow("Signup", "wf-1") as s:
        s.set("step", "done")
    async with cstore.workflow("Signup", "wf-1", shared=True) as s:
        assert await s.get("step") == "done"
        assert s.workflow_status == "completed"
    # A waiter blocks (BLPOP on the object's slot) until the holder commits.
    holder = cstore.object("Cart", "bob")
    await holder.__aenter__()
    holder.set("n", 1)

    async def waiter() -> int:
        async with cstore.object("Cart", "bob") as s:
            n: int = await s.get("n")
            return n

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    await holder.__aexit__(None, None, None)
    assert await asyncio.wait_for(task, 10) == 1


async def test_a_state_key_ttl_on_a_cluster(cluster: Cluster, cstore: RedisStateStore) -> None:
    """Valkey 9: keys expire on their own on every master, the stored size follows, the
    admin read shows the time left. Redis 7.0 has no hash-field expiry: the call says so."""
    from restate_redis import ServerFeatureError
    from restate_redis.tools.admin import Admin

    keys = object_keys(6)  # objects on every master
    if cluster.masters[0].flavour == "redis":
        for key in keys:
            async with cstore.object(SERVICE, key) as s:
                with pytest.raises(ServerFeatureError, match=r"Redis 7\.0\.\d+ has no hash-field"):
                    s.set("token", "abc", ttl=60)
                s.set("n", 1)
            async with cstore.object(SERVICE, key, shared=True) as s:
                assert await s.state_keys() == ["n"]
        return
    for key in keys:
        async with cstore.object(SERVICE, key) as s:
            s.set("token", "abc", ttl=0.3)
            s.set("coupon", "x", ttl=3600)
            s.set("n", 1)
        state = await Admin(cstore).read(SERVICE, key)
        assert 0 < state.expiries["token"] <= 300
        assert 3_590_000 < state.expiries["coupon"] <= 3_600_000
        assert "n" not in state.expiries
    deadline = asyncio.get_running_loop().time() + 10
    for key in keys:
        state_key = cstore.keyspace.object_keys(SERVICE, key).state
        while await cstore.client.hexists(state_key, "token"):
            assert asyncio.get_running_loop().time() < deadline, "the token did not expire"
            await asyncio.sleep(0.02)
        async with cstore.object(SERVICE, key) as s:
            assert await s.state_keys() == ["coupon", "n"]
        okeys = cstore.keyspace.object_keys(SERVICE, key)
        live = await read_state(cstore.client, okeys.state)
        assert (await read_meta(cstore.client, okeys.state)).size == sum(
            len(f) + len(v) for f, v in live.items()
        )
        assert await cstore.client.zcard(okeys.ttls) == 1


async def test_min_replicas_waits_on_the_slot_master(cluster: Cluster) -> None:
    """WAIT goes to the master of the object's slot, on the connection of the commit."""
    async with RedisStateStore.from_url(cluster.url, min_replicas=1, replica_timeout=0.05) as store:
        for key in object_keys(6):  # objects on every master
            with pytest.raises(ReplicationError, match=r"only 0 of min_replicas=1"):
                async with store.object(SERVICE, key) as s:
                    s.set("n", 1)
            async with store.object(SERVICE, key, shared=True) as s:
                assert await s.get("n") == 1
        # The slot moves while a session is open, and the scripts are flushed: its commit
        # follows MOVED to the new master and reloads the script there.
        key = "obj-0"
        by_port = {s.port: s for s in cluster.masters}
        src = by_port[master_port_of(store, key)]
        dst = next(s for s in cluster.masters if s is not src)
        slot = store.client.keyslot(store.keyspace.object_keys(SERVICE, key).state)
        with pytest.raises(ReplicationError, match=r"only 0 of min_replicas=1"):
            async with store.object(SERVICE, key) as s:
                s.set("n", 2)
                assert await asyncio.to_thread(migrate_slot, cluster, slot, src, dst) > 0
                for srv in cluster.masters:
                    with redis.Redis(port=srv.port) as r:
                        r.script_flush()
        assert master_port_of(store, key) == dst.port
        async with store.object(SERVICE, key, shared=True) as s:
            assert await s.get("n") == 2


async def test_workers_exact_over_all_masters(
    cluster: Cluster, cstore: RedisStateStore, workers: Workers
) -> None:
    """4 processes x 500 increments over 20 objects spread over the 3 masters."""
    keys = object_keys(OBJECTS)
    assert {master_port_of(cstore, k) for k in keys} == {s.port for s in cluster.masters}
    for seed in range(WORKERS):
        workers.start("incr", cluster.url, "--count", str(STEPS), "--seed", str(seed))
    tally = workers.collect()
    assert set(tally.errors) == {"HandlerFailed"}, tally.errors
    counts = await read_counts(cstore, keys)
    assert counts == {k: tally.acked[k] for k in keys}
    for key in keys:  # the data lives on the master that owns the object's slot
        port = master_port_of(cstore, key)
        node = cstore.client.get_node(host="127.0.0.1", port=port)
        state_key = cstore.keyspace.object_keys(SERVICE, key).state
        assert await cstore.client.execute_command("EXISTS", state_key, target_nodes=node) == (
            1 if counts[key] else 0
        )


async def test_resharding_while_workers_run(
    cluster: Cluster, cstore: RedisStateStore, workers: Workers
) -> None:
    """Slots of busy objects move to another master mid-run: MOVED/ASK/TRYAGAIN are followed
    and retried, and the counts stay exact."""
    keys = object_keys(6)
    for seed in range(2):
        workers.start(
            "incr", cluster.url, "--objects", "6", "--count", "400", "--seed", str(seed + 10)
        )
    deadline = asyncio.get_running_loop().time() + 30
    while sum((await read_counts(cstore, keys)).values()) < 20:
        assert asyncio.get_running_loop().time() < deadline, "workers made no progress"
        await asyncio.sleep(0.05)
    moved_keys = 0
    by_port = {s.port: s for s in cluster.masters}
    for key in keys[:3]:
        src = by_port[master_port_of(cstore, key)]
        dst = next(s for s in cluster.masters if s is not src)
        slot = cstore.client.keyslot(cstore.keyspace.object_keys(SERVICE, key).state)
        moved_keys += await asyncio.to_thread(migrate_slot, cluster, slot, src, dst)
    tally = workers.collect()
    assert moved_keys > 0
    assert set(tally.errors) <= {"HandlerFailed"}, tally.errors
    counts = await read_counts(cstore, keys)
    assert counts == {k: tally.acked[k] for k in keys}


async def test_ten_thousand_objects_spread_evenly_over_the_masters(
    cluster: Cluster, cstore: RedisStateStore
) -> None:
    """10,000 objects written through the store: each master holds a third of them, within
    5% (counted on each master, by SCAN of the state hashes)."""
    n, lanes = 10_000, 100

    async def lane(j: int) -> None:
        for i in range(j, n, lanes):  # a session that only writes: one round trip
            async with cstore.object("Spread", f"user-{i}", state_preload=False) as s:
                s.set("n", i)

    await asyncio.gather(*(lane(j) for j in range(lanes)))
    pattern = cstore.keyspace.object_pattern("Spread", suffix="state")
    counts = {}
    for srv in cluster.masters:
        with redis.Redis(port=srv.port) as r:
            counts[srv.port] = sum(1 for _ in r.scan_iter(match=pattern, count=1000))
    assert sum(counts.values()) == n, counts
    for port, count in counts.items():
        assert abs(count - n / 3) <= 0.05 * n / 3, (port, counts)


async def test_history_watch_and_restore_on_a_cluster(cluster: Cluster) -> None:
    """watch_many over objects on every master (one blocking read per slot), a resumed
    watch, and a restore, on a cluster."""
    async with empty_store(cluster.url, history=True, acquire_timeout=10) as store:
        keys = [f"h{i}" for i in range(6)]
        client = store.client
        assert isinstance(client, RedisCluster)
        ports = {
            client.get_node_from_key(store.keyspace.object_keys("Cart", k).state).port for k in keys
        }
        assert len(ports) > 1  # the objects live on more than one master
        got: list[tuple[str, int]] = []

        async def watch() -> None:
            async for entry in store.watch_many([("Cart", k) for k in keys]):
                got.append((entry.key, entry.version))
                if len(got) == 2 * len(keys):
                    return

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.2)
        for n in range(2):
            for k in keys:
                async with store.object("Cart", k) as s:
                    s.set("n", n)
        await asyncio.wait_for(task, 20)
        assert sorted(got) == sorted((k, v) for k in keys for v in (1, 2))
        for k in keys:  # each object's entries in order
            assert [v for key, v in got if key == k] == [1, 2]
        assert await store.restore("Cart", "h0", version=1) == 3
        async with store.object("Cart", "h0", shared=True) as s:
            assert await s.get("n") == 0
        resumed = []
        async for entry in store.watch("Cart", "h0", since_version=1):
            resumed.append((entry.version, entry.origin))
            if entry.version == 3:
                break
        assert resumed == [(2, "session"), (3, "restore")]
