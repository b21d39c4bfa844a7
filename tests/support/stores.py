"""Stores the tests open on a server or cluster of their own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from restate_redis import History, RedisStateStore


@contextlib.asynccontextmanager
async def empty_store(url: str, **options: Any) -> AsyncIterator[RedisStateStore]:
    """``RedisStateStore.from_url(url, **options)`` on an emptied database (every master of a
    cluster), closed at the end."""
    async with RedisStateStore.from_url(url, **options) as store:
        await store.client.flushall()
        yield store


async def worker_commit(
    url: str, service: str, key: str, history: History | bool = True, **values: Any
) -> int:
    """One commit of a worker's store (``history``: its option, on by default): each value
    set, None clearing the key. Returns the version it made."""
    async with (
        RedisStateStore.from_url(url, history=history) as store,
        store.object(service, key) as session,
    ):
        for name, value in values.items():
            if value is None:
                session.clear(name)
            else:
                session.set(name, value)
    return session.version
