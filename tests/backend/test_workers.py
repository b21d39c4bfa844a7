"""Several worker processes on the same objects: no lost update, all-or-nothing commits."""

from __future__ import annotations

import os
import random
import signal
import time

import redis

from restate_redis.backend.engine import commit_keys
from restate_redis.keyspace import Keyspace
from restate_redis.serde import MsgPackSerde
from tests.support.keys import state_fields
from tests.support.servers import Server
from tests.support.workers import Workers


def test_two_worker_processes_lose_no_update(server: Server, workers: Workers) -> None:
    with redis.Redis(port=server.port) as r:
        r.flushall()
    procs = [workers.start("counters", server.url, "5", "500", str(seed)) for seed in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ks = Keyspace()
    serde = MsgPackSerde()
    with redis.Redis(port=server.port) as r:
        counts = {
            f"c{i}": serde.deserialize(
                r.hget(ks.object_keys("Counter", f"c{i}").state, "n") or b"\x00"
            )
            for i in range(5)
        }
        leases = [r.exists(ks.object_keys("Counter", f"c{i}").lease) for i in range(5)]
    assert sum(counts.values()) == 1000, counts
    assert leases == [0] * 5


def test_client_killed_mid_commit_applies_all_or_nothing(server: Server, workers: Workers) -> None:
    """SIGKILL a writer at random moments while it sends 1 MB commits of 200 fields."""
    ks = Keyspace()
    state = ks.object_keys("Atomic", "obj").state
    rng = random.Random(7)
    with redis.Redis(port=server.port) as r:
        r.flushall()
        for _ in range(6):
            p = workers.start("big-commits", server.url, "200", "5000")
            try:
                assert p.stdout is not None
                first = p.stdout.readline()  # at least one commit went through
                assert first.strip().isdigit(), p.stderr.read() if p.stderr else ""
                time.sleep(rng.uniform(0.0, 0.3))
            finally:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            r.delete(ks.object_keys("Atomic", "obj").lease)  # the killed writer's lease
            values = state_fields(r.hgetall(state))
            generations = {v.split(b":", 1)[0] for v in values.values()}
            assert len(values) == 200, len(values)
            assert len(generations) == 1, generations


def test_commit_cut_off_mid_send_applies_nothing(server: Server) -> None:
    """A commit whose bytes stop halfway (the client died) leaves the old state whole."""
    import socket

    from redis.connection import Connection

    from restate_redis.backend.scripts import source

    ks = Keyspace()
    keys = ks.object_keys("Atomic", "cut")
    with redis.Redis(port=server.port) as r:
        r.flushall()
        r.hset(keys.state, mapping={"a": b"old", "b": b"old"})
        sha = r.script_load(source("commit"))
        # token, commit id, flags, expire ms, lease ttl ms, field limit, grace ms, next token,
        # history (off), deletes, ttls, sets
        args = [
            "",
            "",
            "c",
            0,
            1000,
            20_000,
            60_000,
            "",
            "",
            0,
            0,
            "a",
            b"new" * 10_000,
            "b",
            b"new",
        ]
        redis_keys = commit_keys(keys)
        packed = b"".join(
            Connection().pack_command("EVALSHA", sha, len(redis_keys), *redis_keys, *args)
        )
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(packed[: len(packed) // 2])
        assert state_fields(r.hgetall(keys.state)) == {b"a": b"old", b"b": b"old"}
        with socket.create_connection(("127.0.0.1", server.port)) as s:  # the whole command
            s.sendall(packed)
            s.recv(100)
        assert state_fields(r.hgetall(keys.state)) == {b"a": b"new" * 10_000, b"b": b"new"}
