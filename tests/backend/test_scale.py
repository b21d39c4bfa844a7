"""Many worker processes on one server: exclusive increments stay exact."""

from __future__ import annotations

from restate_redis import RedisStateStore
from tests.support.servers import Server
from tests.support.workers import Workers, object_keys, read_counts

WORKERS, STEPS, OBJECTS = 4, 500, 20


async def test_four_processes_exact_counts(
    server: Server, store: RedisStateStore, workers: Workers
) -> None:
    """4 processes x 500 increments over 20 objects, random delays, 1 in 10 handlers raising."""
    for seed in range(WORKERS):
        workers.start("incr", server.url, "--count", str(STEPS), "--seed", str(seed))
    tally = workers.collect()
    assert sum(tally.acked.values()) + sum(tally.errors.values()) == WORKERS * STEPS
    assert tally.errors["HandlerFailed"] > 0
    assert set(tally.errors) == {"HandlerFailed"}, tally.errors
    counts = await read_counts(store, object_keys(OBJECTS))
    assert counts == {k: tally.acked[k] for k in object_keys(OBJECTS)}
