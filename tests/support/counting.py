"""Counts client round trips by command name: each command or pipeline written is one.

The bench's meter counts a connection only on its event loop, ``CountingLoop``, which
``tests/conftest.py`` makes the loop of every async test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from restate_redis import RedisStateStore
from restate_redis.tools.bench.meter import CountingConnection as MeteredConnection


class CountingConnection(MeteredConnection):
    """A redis.asyncio connection that logs its round trips, by (first) command name."""

    sent_log: list[str] = []  # noqa: RUF012 - one shared log, reset by the tests

    def sent(self, names: list[str]) -> None:
        CountingConnection.sent_log.extend(names)
        super().sent(names)


@contextlib.asynccontextmanager
async def open_counted_store(
    url: str, *, pool_options: dict[str, Any] | None = None, **store_options: Any
) -> AsyncIterator[RedisStateStore]:
    """A store on an empty database whose connections log what they send (the log cleared);
    its store, client and pool closed at the end."""
    pool = aioredis.ConnectionPool.from_url(
        url, connection_class=CountingConnection, **(pool_options or {})
    )
    client = aioredis.Redis(connection_pool=pool)
    try:
        await client.flushall()
        store = RedisStateStore(client, **store_options)
        try:
            CountingConnection.sent_log.clear()
            yield store
        finally:
            await store.aclose()
    finally:
        await client.aclose()
        await pool.disconnect()
